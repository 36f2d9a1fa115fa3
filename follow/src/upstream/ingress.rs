//! The upstream actor's mailbox.

use super::UpstreamError;
use cairn_primitives::{Block, CertifiedBlock, Digest};
use tokio::sync::{mpsc, oneshot};

/// A request to the upstream actor.
#[derive(Debug)]
pub enum Message {
    /// The certified block at a height (`None` when the upstream does not have it).
    GetFinalization {
        /// Height.
        height: u64,
        /// Where the answer goes; dropping it cancels the request.
        response: oneshot::Sender<Result<Option<CertifiedBlock>, UpstreamError>>,
    },
    /// A block with its body by hash (`None` when the upstream does not have it).
    GetBlock {
        /// Block hash.
        digest: Digest,
        /// Where the answer goes; dropping it cancels the request.
        response: oneshot::Sender<Result<Option<Block>, UpstreamError>>,
    },
    /// The latest certified block (`None` before the upstream's first).
    GetLatest {
        /// Where the answer goes; dropping it cancels the request.
        response: oneshot::Sender<Result<Option<CertifiedBlock>, UpstreamError>>,
    },
    /// The blocks of a range of heights, in order (a prefix when the upstream lacks the rest).
    GetBlocks {
        /// First height.
        first: u64,
        /// Last height.
        last: u64,
        /// Where the answer goes; dropping it cancels the request.
        response: oneshot::Sender<Result<Vec<Block>, UpstreamError>>,
    },
    /// The certificates of the blocks at some heights (`None` where the upstream has none).
    GetCertificates {
        /// The heights.
        heights: Vec<u64>,
        /// Where the answer goes; dropping it cancels the request.
        response: oneshot::Sender<Result<Vec<Option<String>>, UpstreamError>>,
    },
}

impl Message {
    /// Answers the request with `error`.
    pub(super) fn reject(self, error: UpstreamError) {
        match self {
            Self::GetFinalization { response, .. } | Self::GetLatest { response } => {
                let _ = response.send(Err(error));
            }
            Self::GetBlock { response, .. } => {
                let _ = response.send(Err(error));
            }
            Self::GetBlocks { response, .. } => {
                let _ = response.send(Err(error));
            }
            Self::GetCertificates { response, .. } => {
                let _ = response.send(Err(error));
            }
        }
    }
}

/// Handle to the upstream actor (cheap to clone).
#[derive(Clone, Debug)]
pub struct Mailbox {
    sender: mpsc::Sender<Message>,
}

impl Mailbox {
    pub(super) const fn new(sender: mpsc::Sender<Message>) -> Self {
        Self { sender }
    }

    /// Sends the request `message` makes with its response channel, and waits for the answer.
    async fn ask<T>(
        &self,
        message: impl FnOnce(oneshot::Sender<Result<T, UpstreamError>>) -> Message,
    ) -> Result<T, UpstreamError> {
        let (response, answer) = oneshot::channel();
        self.sender
            .send(message(response))
            .await
            .map_err(|_| UpstreamError::Stopped)?;
        answer.await.map_err(|_| UpstreamError::Stopped)?
    }

    /// The certified block at `height`, with its block.
    pub async fn get_finalization(
        &self,
        height: u64,
    ) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.ask(|response| Message::GetFinalization { height, response })
            .await
    }

    /// The block with hash `digest`, its body included and its hash checked.
    pub async fn get_block(&self, digest: Digest) -> Result<Option<Block>, UpstreamError> {
        self.ask(|response| Message::GetBlock { digest, response })
            .await
    }

    /// The latest certified block, with its block.
    pub async fn get_latest(&self) -> Result<Option<CertifiedBlock>, UpstreamError> {
        self.ask(|response| Message::GetLatest { response }).await
    }

    /// The blocks at heights `first..=last`, in order (a prefix when the upstream lacks the
    /// rest).
    pub async fn get_blocks(&self, first: u64, last: u64) -> Result<Vec<Block>, UpstreamError> {
        self.ask(|response| Message::GetBlocks {
            first,
            last,
            response,
        })
        .await
    }

    /// The certificates of the blocks at `heights`, in order (`None` where the upstream has
    /// none).
    pub async fn get_certificates(
        &self,
        heights: Vec<u64>,
    ) -> Result<Vec<Option<String>>, UpstreamError> {
        self.ask(|response| Message::GetCertificates { heights, response })
            .await
    }
}
