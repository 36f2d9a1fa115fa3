//! The application a validator's consensus runs: it builds Tempo blocks (the devnet's real signed
//! transactions, the consensus context in the header, the reshare payload glue selects in
//! `extraData`) and checks the blocks others propose.

use crate::{
    block::{ValidatorBlock, ValidatorBlockConfig, ValidatorContext, extra_data},
    engine::Scheme,
};
use alloy_primitives::B256;
use cairn_devnet::{tempo_block, transactions::TransactionFactory};
use cairn_primitives::TempoConsensusContext;
use commonware_codec::Encode as _;
use commonware_consensus::{Application, CertifiableBlock as _, marshal::ancestry::Ancestry};
use commonware_cryptography::{
    Digested, Digestible as _, bls12381::primitives::variant::MinSig, ed25519,
};
use commonware_glue::dkg::reshare;
use commonware_runtime::Clock;
use commonware_utils::sequence::Unit;
use futures::StreamExt as _;
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};
use tracing::warn;

/// The base fee of the transactions in validators' blocks, as in the devnet's.
const BASE_FEE: u64 = 10_000_000_000;

/// Builds and checks Tempo blocks (cheap to clone).
#[derive(Clone)]
pub struct TempoApplication {
    blocks: ValidatorBlockConfig,
    transactions: Arc<TransactionFactory>,
}

impl TempoApplication {
    /// An application reading blocks with `blocks`, signing its transactions for `chain_id`.
    pub fn new(blocks: ValidatorBlockConfig, chain_id: u64) -> Self {
        Self {
            blocks,
            transactions: Arc::new(TransactionFactory::new(chain_id, BASE_FEE)),
        }
    }

    /// The block on `parent` for `context`, carrying `extra`.
    fn build(
        &self,
        now: SystemTime,
        parent: &ValidatorBlock,
        context: &ValidatorContext,
        extra: Vec<u8>,
    ) -> Result<ValidatorBlock, String> {
        let height = parent.block().height() + 1;
        let transactions = self
            .transactions
            .transactions(height)
            .map_err(|err| format!("signing the transactions of block {height}: {err}"))?;
        let millis = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
            .max(parent.block().header().timestamp_millis() + 1);
        let proposer = B256::from_slice(&context.leader.encode())
            .try_into()
            .map_err(|err| format!("the leader's key: {err}"))?;
        let tempo_context = TempoConsensusContext {
            epoch: context.round.epoch().get(),
            view: context.round.view().get(),
            parent_view: context.parent.0.get(),
            proposer,
        };
        let block = tempo_block(parent.block(), millis, extra, transactions, tempo_context)
            .map_err(|err| format!("block {height}: {err}"))?;
        ValidatorBlock::new(block, &self.blocks).map_err(|err| err.to_string())
    }
}

impl<E: Clock + Send + 'static> Application<E> for TempoApplication {
    type SigningScheme = Scheme;
    type Context = ValidatorContext;
    type Block = ValidatorBlock;
    type Input = reshare::Input<(), MinSig, ed25519::PrivateKey, Unit>;

    async fn propose(
        &mut self,
        (runtime, context): (E, ValidatorContext),
        mut ancestry: impl Ancestry<ValidatorBlock>,
        input: Self::Input,
    ) -> Option<Digested<ValidatorBlock>> {
        let parent = ancestry.next().await?;
        let extra = input
            .payload
            .map(|payload| extra_data(&payload))
            .unwrap_or_default();
        match self.build(runtime.current(), parent.inner(), &context, extra) {
            Ok(block) => {
                let digest = block.digest();
                Some(Digested::precomputed(block, digest))
            }
            Err(err) => {
                warn!(%err, "could not build a block");
                None
            }
        }
    }

    /// A proposed block must carry the round's context in its header (Tempo's followers read
    /// the view and proposer there) and be stamped after its parent; marshal has checked its
    /// height and parent, glue its reshare payload, and decoding its body against the header's
    /// roots.
    async fn verify(
        &mut self,
        (_, context): (E, ValidatorContext),
        mut ancestry: impl Ancestry<ValidatorBlock>,
    ) -> bool {
        let (Some(block), Some(parent)) = (ancestry.next().await, ancestry.next().await) else {
            return false;
        };
        let (block, parent) = (block.inner(), parent.inner());
        if block.context() != context {
            warn!(
                height = block.block().height(),
                "a block whose header names another round"
            );
            return false;
        }
        block.block().header().timestamp_millis() > parent.block().header().timestamp_millis()
    }
}
