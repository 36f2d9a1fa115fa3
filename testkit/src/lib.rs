//! Test support for cairn's crates, a dev-dependency of each crate above `feed`: the real Tempo
//! fixtures, small committees that sign real threshold certificates, chains they certify,
//! in-memory chain readers, and an allocation meter for decoder tests.

use alloy_primitives::{B256, Bytes};
use cairn_devnet::{CeremonyOutput, CommitteeSigner, trusted_deal};
use cairn_dkg::DkgOutcome;
use cairn_dkg::Identity;
use cairn_epoch::{ChainProfile, FinalizationVerifier, encode_certificate};
use cairn_feed::{ChainReader, ReadError};
use cairn_primitives::{
    Block, Body, CertifiedBlock, ProposerKey, TempoConsensusContext, TempoHeader,
};
use commonware_consensus::types::{Epoch, Round, View};
use commonware_cryptography::{
    Signer,
    ed25519::{PrivateKey, PublicKey},
};
use commonware_math::algebra::Random;
use rand::{SeedableRng, rngs::StdRng};
use std::collections::BTreeMap;
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    path::PathBuf,
};

/// The number in environment variable `name` (a test's or benchmark's size), else `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Directory of the real Tempo network fixtures.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tempo")
}

/// Reads a fixture file as text.
pub fn fixture(name: &str) -> String {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("fixture {} is readable: {err}", path.display()))
}

/// Parses one of the `*.certified-block.json` fixtures.
pub fn certified_fixture(name: &str) -> CertifiedBlock {
    serde_json::from_str(&fixture(name)).expect("fixture is a CertifiedBlock")
}

/// The real mainnet boundary block 32,723,999 (epoch 1514) with its certificate.
pub fn mainnet_boundary() -> CertifiedBlock {
    certified_fixture("presto-32723999-boundary.certified-block.json")
}

/// The real mainnet block 32,724,390 (epoch 1515) with its certificate.
pub fn mainnet_regular() -> CertifiedBlock {
    certified_fixture("presto-32724390.certified-block.json")
}

/// Decodes a fixture hex file (with or without `0x`).
pub fn fixture_hex(name: &str) -> Vec<u8> {
    alloy_primitives::hex::decode(fixture(name).trim()).expect("fixture is hex")
}

/// A committee of `n` ed25519 keys derived from `seed`.
pub fn keys(seed: u64, n: usize) -> Vec<PrivateKey> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| PrivateKey::random(&mut rng)).collect()
}

/// Public keys of `keys`.
pub fn public_keys(keys: &[PrivateKey]) -> Vec<PublicKey> {
    keys.iter().map(Signer::public_key).collect()
}

/// A small test chain committee: a real trusted-deal sharing and a signer per member.
pub struct TestCommittee {
    /// Namespace the committee signs under.
    pub namespace: Vec<u8>,
    /// Members' keys.
    pub keys: Vec<PrivateKey>,
    /// The ceremony output and shares.
    pub ceremony: CeremonyOutput,
    /// The signer.
    pub signer: CommitteeSigner,
}

impl TestCommittee {
    /// A committee of `n` members from a trusted deal seeded with `seed`.
    pub fn new(namespace: &[u8], seed: u64, n: usize) -> Self {
        let keys = keys(seed, n);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let ceremony = trusted_deal(&mut rng, &keys).expect("trusted deal succeeds");
        Self::from_ceremony(namespace, keys, ceremony)
    }

    /// A committee from an existing ceremony output.
    pub fn from_ceremony(
        namespace: &[u8],
        keys: Vec<PrivateKey>,
        ceremony: CeremonyOutput,
    ) -> Self {
        let signer = CommitteeSigner::new(namespace, &ceremony.output, &ceremony.shares)
            .expect("ceremony output fits its committee");
        Self {
            namespace: namespace.to_vec(),
            keys,
            ceremony,
            signer,
        }
    }

    /// The DKG outcome for `epoch` describing this committee.
    pub fn outcome(&self, epoch: u64, is_next_full_dkg: bool) -> DkgOutcome {
        DkgOutcome {
            epoch,
            output: self.ceremony.output.clone(),
            next: Some(cairn_dkg::NextCeremony {
                players: self.ceremony.output.players().clone(),
                full_dkg: is_next_full_dkg,
            }),
        }
    }

    /// A quorum of signers, starting at member `offset` (rotating who is missing).
    pub fn quorum_from(&self, offset: usize) -> Vec<PublicKey> {
        let players: Vec<PublicKey> = self.signer.players().iter().cloned().collect();
        let quorum = self.signer.quorum() as usize;
        (0..quorum)
            .map(|i| players[(offset + i) % players.len()].clone())
            .collect()
    }

    /// Certifies `block` at (`epoch`, `view`) with a quorum of members.
    pub fn certify(&self, block: Block, epoch: u64, view: u64) -> CertifiedBlock {
        let finalization = self
            .signer
            .finalize(
                Round::new(Epoch::new(epoch), View::new(view)),
                View::new(view.saturating_sub(1)),
                block.hash(),
                &self.quorum_from(view as usize),
            )
            .expect("a quorum signs");
        CertifiedBlock {
            epoch,
            view,
            height: Some(block.height()),
            digest: block.hash().0,
            certificate: encode_certificate(&finalization),
            block: Some(block),
        }
    }
}

/// Verifies `chain` in height order knowing only the profile's genesis outcome (each boundary
/// registers the next epoch), and returns the identity that verified each epoch.
pub fn verify_chain(profile: &ChainProfile, chain: &[CertifiedBlock]) -> BTreeMap<u64, Identity> {
    let verifier = FinalizationVerifier::new(
        profile.epochs.clone(),
        profile.scheme_provider(cairn_epoch::DEFAULT_MAX_EPOCHS),
    );
    let mut rng = StdRng::seed_from_u64(3);
    let mut identities = BTreeMap::new();
    for certified in chain {
        let (verified, _) = verifier
            .verify_and_register(&mut rng, certified)
            .unwrap_or_else(|err| panic!("height {:?}: {err}", certified.height));
        identities.insert(verified.epoch().get(), verified.identity);
    }
    identities
}

/// A chain with nothing stored, for exercising the RPC server's subscriptions alone.
#[derive(Clone, Copy, Debug)]
pub struct EmptyChain;

impl ChainReader for EmptyChain {
    fn finalized_height(&self) -> Option<u64> {
        None
    }

    async fn certified_at(&self, _: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        Ok(None)
    }

    async fn block_at(&self, _: u64) -> Result<Option<Block>, ReadError> {
        Ok(None)
    }

    async fn block_by_hash(&self, _: cairn_primitives::Digest) -> Result<Option<Block>, ReadError> {
        Ok(None)
    }

    async fn transaction_by_hash(&self, _: B256) -> Result<Option<(Block, usize)>, ReadError> {
        Ok(None)
    }
}

/// An in-memory chain for serving over RPC in tests (a stand-in for a node's store).
#[derive(Clone, Debug, Default)]
pub struct MemoryChain {
    blocks: std::sync::Arc<std::sync::RwLock<BTreeMap<u64, CertifiedBlock>>>,
    /// Blocks served without a certificate (genesis, history).
    uncertified: std::sync::Arc<std::sync::RwLock<BTreeMap<u64, Block>>>,
}

impl MemoryChain {
    /// Adds a certified block (it must carry its block).
    pub fn insert(&self, certified: CertifiedBlock) {
        let height = certified
            .block
            .as_ref()
            .expect("certified blocks carry blocks")
            .height();
        self.blocks.write().expect("lock").insert(height, certified);
    }

    /// Adds a block served without a certificate (by height and hash only).
    pub fn insert_block(&self, block: Block) {
        self.uncertified
            .write()
            .expect("lock")
            .insert(block.height(), block);
    }
}

impl ChainReader for MemoryChain {
    /// Keeps no provenance: a height it holds is not explained, any other is not served.
    async fn explain(&self, height: u64) -> Result<cairn_feed::Explained, ReadError> {
        let held = self.blocks.read().expect("lock").contains_key(&height)
            || self.uncertified.read().expect("lock").contains_key(&height);
        Ok(if held {
            cairn_feed::Explained::Unsupported
        } else {
            cairn_feed::Explained::NotServed
        })
    }

    fn finalized_height(&self) -> Option<u64> {
        self.blocks
            .read()
            .expect("lock")
            .keys()
            .next_back()
            .copied()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        Ok(self.blocks.read().expect("lock").get(&height).cloned())
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        let certified = self
            .blocks
            .read()
            .expect("lock")
            .get(&height)
            .and_then(|certified| certified.block.clone());
        Ok(certified.or_else(|| self.uncertified.read().expect("lock").get(&height).cloned()))
    }

    async fn block_by_hash(
        &self,
        hash: cairn_primitives::Digest,
    ) -> Result<Option<Block>, ReadError> {
        let certified = self
            .blocks
            .read()
            .expect("lock")
            .values()
            .filter_map(|certified| certified.block.clone())
            .find(|block| block.hash() == hash);
        Ok(certified.or_else(|| {
            self.uncertified
                .read()
                .expect("lock")
                .values()
                .find(|block| block.hash() == hash)
                .cloned()
        }))
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        use alloy_consensus::transaction::TxHashRef as _;
        Ok(self
            .blocks
            .read()
            .expect("lock")
            .values()
            .filter_map(|certified| certified.block.clone())
            .find_map(|block| {
                let index = block
                    .transactions()
                    .iter()
                    .position(|tx| *tx.tx_hash() == hash)?;
                Some((block, index))
            }))
    }
}

/// A chain served from afar: every read answers after `delay` of the runtime's time, as an
/// upstream across a network does (a stand-in for latency in simulations).
pub struct DistantChain<C, K> {
    chain: C,
    clock: std::sync::Arc<K>,
    delay: std::time::Duration,
}

impl<C: Clone, K> Clone for DistantChain<C, K> {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            clock: self.clock.clone(),
            delay: self.delay,
        }
    }
}

impl<C, K> DistantChain<C, K> {
    /// `chain`, each read of which waits `delay` on `clock`.
    pub fn new(chain: C, clock: K, delay: std::time::Duration) -> Self {
        Self {
            chain,
            clock: std::sync::Arc::new(clock),
            delay,
        }
    }
}

impl<C: ChainReader, K: commonware_runtime::Clock + Send + Sync + 'static> ChainReader
    for DistantChain<C, K>
{
    fn finalized_height(&self) -> Option<u64> {
        self.chain.finalized_height()
    }

    fn first_height(&self) -> u64 {
        self.chain.first_height()
    }

    async fn certified_at(&self, height: u64) -> Result<Option<CertifiedBlock>, ReadError> {
        self.clock.sleep(self.delay).await;
        self.chain.certified_at(height).await
    }

    async fn block_at(&self, height: u64) -> Result<Option<Block>, ReadError> {
        self.clock.sleep(self.delay).await;
        self.chain.block_at(height).await
    }

    async fn block_by_hash(
        &self,
        hash: cairn_primitives::Digest,
    ) -> Result<Option<Block>, ReadError> {
        self.clock.sleep(self.delay).await;
        self.chain.block_by_hash(hash).await
    }

    async fn transaction_by_hash(&self, hash: B256) -> Result<Option<(Block, usize)>, ReadError> {
        self.clock.sleep(self.delay).await;
        self.chain.transaction_by_hash(hash).await
    }
}

/// Connects to `ws://{addr}` and subscribes to `consensus_event` notifications.
pub async fn subscribe(
    addr: impl std::fmt::Display,
    buffer: usize,
) -> (
    jsonrpsee::ws_client::WsClient,
    jsonrpsee::core::client::Subscription<cairn_primitives::Event>,
) {
    use jsonrpsee::core::client::SubscriptionClientT;
    let client = jsonrpsee::ws_client::WsClientBuilder::default()
        .max_buffer_capacity_per_subscription(buffer)
        .build(format!("ws://{addr}"))
        .await
        .expect("websocket connects");
    let subscription = client
        .subscribe(
            "consensus_subscribe",
            jsonrpsee::rpc_params![],
            "consensus_unsubscribe",
        )
        .await
        .expect("subscribes");
    (client, subscription)
}

/// The `extraData` of a certified block's header (where a boundary carries its outcome).
pub fn extra_data(certified: &CertifiedBlock) -> Vec<u8> {
    let block = certified
        .block
        .as_ref()
        .expect("a certified block with its block");
    block.header().inner.extra_data.to_vec()
}

/// The proposer key written into test headers (a valid ed25519 point, as Tempo's decoder checks).
pub fn test_proposer() -> ProposerKey {
    let key = PrivateKey::from_seed(1).public_key();
    ProposerKey::try_from(B256::from_slice(&commonware_codec::Encode::encode(&key)))
        .expect("an ed25519 public key is a valid proposer")
}

/// A block at `height` with the devnet's real signed transactions for that height (EIP-1559,
/// Tempo 0x76 and legacy) and the given `extraData`.
pub fn test_block(height: u64, epoch: u64, view: u64, extra_data: Vec<u8>) -> Block {
    let transactions = cairn_devnet::transactions::TransactionFactory::new(1337, 1_000_000_000)
        .transactions(height.max(1))
        .expect("devnet keys sign");
    let body = Body {
        transactions,
        ommers: Vec::new(),
        withdrawals: None,
    };
    let inner = alloy_consensus::Header {
        parent_hash: B256::with_last_byte((height % 256) as u8),
        number: height,
        gas_limit: 30_000_000,
        timestamp: 1_700_000_000 + height,
        extra_data: Bytes::from(extra_data),
        transactions_root: alloy_consensus::proofs::calculate_transaction_root(&body.transactions),
        base_fee_per_gas: Some(1_000_000_000),
        ..Default::default()
    };
    let header = TempoHeader {
        general_gas_limit: 30_000_000,
        shared_gas_limit: 0,
        timestamp_millis_part: 250,
        inner,
        consensus_context: Some(TempoConsensusContext {
            epoch,
            view,
            parent_view: view.saturating_sub(1),
            proposer: test_proposer(),
        }),
    };
    Block::new(header, Some(body)).expect("body matches its roots")
}

/// A genesis block and `count` blocks on top of it, each the parent of the next.
pub fn linked_chain(count: u64) -> Vec<Block> {
    let mut chain = vec![test_block(0, 0, 0, Vec::new())];
    for height in 1..=count {
        let parent = chain.last().expect("genesis is first").hash();
        let block = test_block(height, 0, height, Vec::new());
        let (mut header, body) = block.into_parts();
        header.inner.parent_hash = parent.0;
        chain.push(Block::new(header, body).expect("body unchanged"));
    }
    chain
}

/// A profile whose genesis outcome is `committee`'s (genesis header included), with epochs of
/// `epoch_length` blocks.
pub fn committee_profile(committee: &TestCommittee, epoch_length: u64) -> ChainProfile {
    let outcome = committee.outcome(0, false);
    let (mut header, _) = test_block(0, 0, 0, Vec::new()).into_parts();
    header.inner.extra_data = outcome.to_bytes().into();
    ChainProfile {
        name: "committee".into(),
        chain_id: Some(1337),
        namespace: committee.namespace.clone(),
        epochs: cairn_epoch::EpochStrategy::new(epoch_length).expect("valid epoch length"),
        genesis: outcome,
        genesis_header: Some(header),
        network_identities: Vec::new(),
        follow_url: None,
        trusted_blocks: Vec::new(),
        upstream_rate_limit: None,
    }
}

/// [`committee_profile`] and `count` blocks linked on top of its genesis, each certified by
/// `committee` in its epoch (view = height); every boundary block carries the outcome of a
/// reshare to the same committee.
pub fn committee_chain(
    committee: &TestCommittee,
    count: u64,
    epoch_length: u64,
) -> (ChainProfile, Vec<CertifiedBlock>) {
    rotating_chain(std::slice::from_ref(committee), count, epoch_length)
}

/// A profile and `count` blocks linked on top of its genesis, epoch `e` certified by
/// `committees[e % n]`, each boundary block announcing the next epoch's committee. With several
/// committees the network identity changes at every epoch (a full DKG at every boundary), so a
/// follower that verifies an epoch with any key but the one its boundary announced fails; with
/// one, every boundary is a reshare to the same committee.
pub fn rotating_chain(
    committees: &[TestCommittee],
    count: u64,
    epoch_length: u64,
) -> (ChainProfile, Vec<CertifiedBlock>) {
    rotating_chain_forked(committees, count, epoch_length, None)
}

/// [`rotating_chain`] on a chain whose TIP-1123 fork is at `tip1123_time`: every boundary
/// outcome is written in the layout its block's timestamp (1,700,000,000 plus its height)
/// selects, and the profile carries the fork time.
pub fn rotating_chain_forked(
    committees: &[TestCommittee],
    count: u64,
    epoch_length: u64,
    tip1123_time: Option<u64>,
) -> (ChainProfile, Vec<CertifiedBlock>) {
    let committee_of = |epoch: u64| &committees[(epoch % committees.len() as u64) as usize];
    let mut profile = committee_profile(committee_of(0), epoch_length);
    profile.epochs = profile.epochs.with_tip1123_time(tip1123_time);
    let genesis = Block::header_only(profile.genesis_header.clone().expect("genesis header"));
    let mut parent = genesis.hash();
    let mut chain = Vec::new();
    for height in 1..=count {
        let epoch = height / epoch_length;
        let (mut header, body) = test_block(height, epoch, height, Vec::new()).into_parts();
        if profile.epochs.is_boundary(height) {
            let outcome = committee_of(epoch + 1).outcome(epoch + 1, committees.len() > 1);
            let bytes = match profile.epochs.outcome_layout(header.inner.timestamp) {
                cairn_dkg::OutcomeLayout::Legacy => outcome.to_bytes(),
                cairn_dkg::OutcomeLayout::Tip1123 => outcome.compact().to_bytes(),
            };
            header.inner.extra_data = bytes.into();
        }
        header.inner.parent_hash = parent.0;
        let block = Block::new(header, body).expect("body unchanged");
        parent = block.hash();
        chain.push(committee_of(epoch).certify(block, epoch, height));
    }
    (profile, chain)
}

/// A global allocator that records, per thread, the bytes currently allocated and the peak
/// since the last [`AllocationMeter::reset`]. Install it with `#[global_allocator]`.
pub struct AllocationMeter;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

impl AllocationMeter {
    /// Starts a new measurement on this thread.
    pub fn reset() {
        CURRENT.with(|c| c.set(0));
        PEAK.with(|p| p.set(0));
    }

    /// Peak bytes allocated on this thread since [`AllocationMeter::reset`].
    pub fn peak() -> usize {
        PEAK.with(Cell::get)
    }

    fn grow(bytes: usize) {
        let current = CURRENT.with(|c| {
            let next = c.get().saturating_add(bytes);
            c.set(next);
            next
        });
        PEAK.with(|p| p.set(p.get().max(current)));
    }

    fn shrink(bytes: usize) {
        CURRENT.with(|c| c.set(c.get().saturating_sub(bytes)));
    }
}

// SAFETY: every call forwards to the system allocator unchanged; the bookkeeping only touches
// const-initialised thread-locals, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for AllocationMeter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::grow(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::shrink(layout.size());
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::shrink(layout.size());
        Self::grow(new_size);
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
