//! Support for cairn's cross-crate and process tests and benchmarks: everything in
//! [`cairn_testkit`], and running the `cairn` binary ([`process`]).

pub mod process;

pub use cairn_testkit::*;

use cairn_follow::{
    Engine, EngineConfig, Upstreams,
    engine::EngineContext,
    upstream::{Sourced, Sources, UpstreamRequests},
};
use tokio::sync::mpsc;

/// Starts a follower labelled `label` in `context`, fed by `notifications` and fetching from
/// `sources`; panics when it cannot start.
pub async fn start_follower<E: EngineContext, U: UpstreamRequests>(
    context: &E,
    label: &'static str,
    config: EngineConfig,
    notifications: mpsc::Receiver<Sourced>,
    sources: Sources<U>,
) -> Engine<E> {
    let upstreams = Upstreams {
        notifications,
        sources,
    };
    Engine::init(context.child(label), config, upstreams)
        .await
        .expect("the follower starts")
}
