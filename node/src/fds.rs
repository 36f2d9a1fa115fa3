//! The open-file budget: every RPC and metrics connection holds a file descriptor, and so do
//! the stores, which open files as they grow; commonware's storage panics when it cannot. At
//! start the soft open-file limit is raised to the hard one, and the RPC connection cap is
//! lowered, with a warning, to what the limit leaves after the stores' and the other
//! listeners' shares.

use eyre::eyre;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept for the stores (their partitions' blobs and journals), the upstream
/// connections, the listeners and the runtime: a datadir following a long chain holds a few
/// hundred at most.
pub const RESERVED_FILES: u64 = 640;

/// Connections the metrics server serves at once (scrapes are short).
pub const METRICS_CONNECTIONS: usize = 32;

/// Connections the admin listener (`--admin-addr`) serves at once.
pub const ADMIN_CONNECTIONS: u32 = 16;

/// The fewest RPC connections a node serves; a limit that leaves fewer is refused.
const MIN_RPC_CONNECTIONS: u64 = 16;

/// What the open-file limit allows.
#[derive(Debug, PartialEq, Eq)]
pub struct Budget {
    /// The soft open-file limit in force (after raising it).
    pub limit: u64,
    /// The RPC connection cap to use.
    pub rpc_connections: u32,
    /// Set when the cap was lowered: a line for the operator.
    pub warning: Option<String>,
}

/// Raises the soft open-file limit to the hard one and fits `rpc_connections` (and the caps of
/// the metrics server and the admin listener, when they run) under it.
pub fn budget(rpc_connections: u32, metrics: bool, admin: bool) -> eyre::Result<Budget> {
    let current = getrlimit(Resource::Nofile);
    if current.current != current.maximum {
        // Raising the soft limit up to the hard one needs no privilege.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: current.maximum,
                maximum: current.maximum,
            },
        );
    }
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let others = if metrics {
        METRICS_CONNECTIONS as u64
    } else {
        0
    } + if admin {
        u64::from(ADMIN_CONNECTIONS)
    } else {
        0
    };
    fit(limit, rpc_connections, others)
}

/// [`budget`] for a given soft limit, with `others` descriptors kept for the other listeners.
fn fit(limit: u64, rpc_connections: u32, others: u64) -> eyre::Result<Budget> {
    let left = limit.saturating_sub(RESERVED_FILES + others);
    if left < MIN_RPC_CONNECTIONS {
        return Err(eyre!(
            "the open-file limit is {limit}: the stores need about {RESERVED_FILES} and RPC at least {MIN_RPC_CONNECTIONS} more; raise it (`ulimit -n 4096`, or LimitNOFILE= in a systemd unit)"
        ));
    }
    let fitted = u32::try_from(left).unwrap_or(u32::MAX).min(rpc_connections);
    let warning = (fitted < rpc_connections).then(|| {
        format!(
            "open-file limit {limit}: --rpc-max-connections lowered from {rpc_connections} to {fitted}, keeping {RESERVED_FILES} for the stores and {others} for the metrics and admin listeners; raise the limit (`ulimit -n`) to serve more"
        )
    });
    Ok(Budget {
        limit,
        rpc_connections: fitted,
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::{RESERVED_FILES, fit};

    #[test]
    fn connection_caps_fit_under_the_open_file_limit() {
        let roomy = fit(1 << 20, 2048, 48).expect("fits");
        assert_eq!((roomy.rpc_connections, roomy.warning), (2048, None));

        let tight = fit(1024, 2048, 48).expect("fits once lowered");
        assert_eq!(u64::from(tight.rpc_connections), 1024 - RESERVED_FILES - 48);
        assert!(tight.warning.expect("warns").contains("lowered from 2048"));
        let alone = fit(1024, 2048, 0).expect("fits");
        assert_eq!(u64::from(alone.rpc_connections), 1024 - RESERVED_FILES);

        let err = fit(256, 2048, 0).expect_err("too low for the stores");
        assert!(err.to_string().contains("ulimit -n"), "{err}");
    }
}
