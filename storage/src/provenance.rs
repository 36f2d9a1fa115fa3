//! Where each stored block's bytes came from: the upstream that served them, when, and how the
//! follower took them (live, catch-up, repair, backfill, checkpoint). One fixed 11-byte record
//! per height in commonware's ordinal store (15 bytes on disk with its checksum), the
//! upstreams' addresses in a small table beside it. How a block is authenticated is not
//! recorded: the follower's chain reader (`cairn_follow::chain`) derives it from the certificates and blocks already stored.
//!
//! Records are queued as blocks are taken and written and synced together once a second, off
//! the paths that store blocks; a kill loses at most the records of the last second, whose
//! heights are then explained without a source. The ordinal store keeps a record only when
//! the metadata beside it marks it written, so a kill never leaves a torn record readable:
//! the bits of a section are saved after its records are synced (only those of sections not
//! yet full are kept in memory).

use crate::StoreContext;
use commonware_codec::{Decode as _, Encode as _, RangeCfg};
use commonware_storage::{
    metadata::{self, Metadata},
    ordinal::{self, Ordinal},
};
use commonware_utils::{
    bitmap::BitMap,
    sequence::{FixedBytes, U64},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    num::{NonZeroU64, NonZeroUsize},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};
use tracing::warn;

/// How a stored block's bytes reached the follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// In an upstream's finalization event, with its certificate.
    Live,
    /// Fetched by height while catching up through the hash chain.
    CatchUp,
    /// Fetched by marshal's resolver, or again after the stored copy was found damaged.
    Repair,
    /// Fetched by height below a checkpoint, down to genesis.
    Backfill,
    /// The checkpoint the follower started from.
    Checkpoint,
}

impl How {
    const fn code(self) -> u8 {
        match self {
            Self::Live => 1,
            Self::CatchUp => 2,
            Self::Repair => 3,
            Self::Backfill => 4,
            Self::Checkpoint => 5,
        }
    }

    const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Live,
            2 => Self::CatchUp,
            3 => Self::Repair,
            4 => Self::Backfill,
            5 => Self::Checkpoint,
            _ => return None,
        })
    }
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Live => "live",
            Self::CatchUp => "catch-up",
            Self::Repair => "repair",
            Self::Backfill => "backfill",
            Self::Checkpoint => "checkpoint",
        })
    }
}

/// Who served a height's bytes, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    /// The upstream's address; `None` when it is not known (the checkpoint block).
    pub source: Option<String>,
    /// When the bytes arrived, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How the follower took them.
    pub how: How,
}

/// Why the provenance store failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// The record store failed.
    #[error("provenance records {what}: {error}")]
    Records {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        error: ordinal::Error,
    },
    /// The table beside them failed.
    #[error("provenance table {what}: {error}")]
    Table {
        /// What was being done.
        what: &'static str,
        /// The store's error.
        error: metadata::Error,
    },
    /// A stored entry of the table does not decode (the datadir is damaged).
    #[error("the provenance table's entry {0} does not decode")]
    Corrupt(u64),
    /// An earlier failure destroyed the store handle.
    #[error("the provenance store failed earlier and records nothing more")]
    Poisoned,
}

/// Heights per ordinal section (one file each; 16,384 × 15 bytes = 240 KiB).
const ITEMS_PER_SECTION: u64 = 16_384;
/// Table keys from here on name sources; below, sections.
const SOURCE_KEYS: u64 = 1 << 63;
/// A record's source field when it has none.
const NO_SOURCE: u16 = u16::MAX;
/// Heights queued at most between two flushes; past it, records are dropped (and counted).
const MAX_QUEUED_HEIGHTS: u64 = 1 << 22;
/// Runs queued at most between two flushes (a live block is a run of one); past it, records are
/// dropped (and counted).
const MAX_QUEUED_RUNS: usize = 1 << 16;
/// How often queued records are written and synced.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

type Record = FixedBytes<11>;

fn encode(source: u16, how: How, at_ms: u64) -> Record {
    let mut bytes = [0u8; 11];
    bytes[..2].copy_from_slice(&source.to_be_bytes());
    bytes[2] = how.code();
    bytes[3..].copy_from_slice(&at_ms.to_be_bytes());
    Record::new(bytes)
}

fn decode(record: &Record) -> Option<(u16, How, u64)> {
    let bytes: &[u8] = record.as_ref();
    let source = u16::from_be_bytes([bytes[0], bytes[1]]);
    let how = How::from_code(bytes[2])?;
    let mut at = [0u8; 8];
    at.copy_from_slice(&bytes[3..]);
    Some((source, how, u64::from_be_bytes(at)))
}

/// A run of heights taken from one source at one moment, waiting to be written.
#[derive(Clone, Debug)]
struct Queued {
    first: u64,
    last: u64,
    source: Option<String>,
    how: How,
    at_ms: u64,
}

/// The stores and what is kept of them in memory.
struct Stores<E: StoreContext> {
    records: Option<Ordinal<E, Record>>,
    table: Option<Metadata<E, U64, Vec<u8>>>,
    /// The written bits of the sections not yet full.
    partial: BTreeMap<u64, BitMap>,
    /// Sections whose bits changed since the last sync.
    dirty: BTreeSet<u64>,
    sources: Vec<String>,
}

impl<E: StoreContext> Stores<E> {
    fn source_id(&mut self, url: &str) -> u16 {
        if let Some(id) = self.sources.iter().position(|known| known == url) {
            return u16::try_from(id).unwrap_or(NO_SOURCE);
        }
        let Ok(id) = u16::try_from(self.sources.len()) else {
            return NO_SOURCE;
        };
        if id == NO_SOURCE {
            return NO_SOURCE;
        }
        self.sources.push(url.to_string());
        if let Some(table) = self.table.as_mut() {
            table.put(
                U64::new(SOURCE_KEYS + u64::from(id)),
                url.as_bytes().to_vec(),
            );
        }
        id
    }

    async fn put(&mut self, height: u64, record: Record) -> Result<(), ProvenanceError> {
        let records = self.records.take().ok_or(ProvenanceError::Poisoned)?;
        let records =
            records
                .put(height, record)
                .await
                .map_err(|error| ProvenanceError::Records {
                    what: "writing",
                    error,
                })?;
        self.records = Some(records);
        let section = height / ITEMS_PER_SECTION;
        if let Some(bits) = self.partial.get_mut(&section) {
            bits.set(height % ITEMS_PER_SECTION, true);
        } else if !self.is_full(section) {
            let mut bits = BitMap::zeroes(ITEMS_PER_SECTION);
            bits.set(height % ITEMS_PER_SECTION, true);
            self.partial.insert(section, bits);
        }
        self.dirty.insert(section);
        Ok(())
    }

    /// Whether `section` was saved as full (its bits are not kept).
    fn is_full(&self, section: u64) -> bool {
        self.table
            .as_ref()
            .and_then(|table| table.get(&U64::new(section)))
            .is_some_and(Vec::is_empty)
    }

    /// Syncs the records, then saves the bits that mark them written.
    async fn sync(&mut self) -> Result<(), ProvenanceError> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let records = self.records.take().ok_or(ProvenanceError::Poisoned)?;
        self.records = Some(
            records
                .sync()
                .await
                .map_err(|error| ProvenanceError::Records {
                    what: "syncing",
                    error,
                })?,
        );
        let mut table = self.table.take().ok_or(ProvenanceError::Poisoned)?;
        for section in std::mem::take(&mut self.dirty) {
            let Some(bits) = self.partial.get(&section) else {
                continue;
            };
            if bits.count_ones() == ITEMS_PER_SECTION {
                self.partial.remove(&section);
                table.put(U64::new(section), Vec::new());
            } else {
                table.put(U64::new(section), bits.encode().to_vec());
            }
        }
        self.table = Some(table.sync().await.map_err(|error| ProvenanceError::Table {
            what: "syncing",
            error,
        })?);
        Ok(())
    }

    async fn get(&self, height: u64) -> Result<Option<Served>, ProvenanceError> {
        let records = self.records.as_ref().ok_or(ProvenanceError::Poisoned)?;
        let record = records
            .get(height)
            .await
            .map_err(|error| ProvenanceError::Records {
                what: "reading",
                error,
            })?;
        Ok(record
            .as_ref()
            .and_then(decode)
            .map(|(source, how, at_ms)| Served {
                source: self.sources.get(usize::from(source)).cloned(),
                at_ms,
                how,
            }))
    }
}

struct Shared<E: StoreContext> {
    queue: Mutex<Queue>,
    /// Set once the store failed: nothing more is queued.
    stopped: std::sync::atomic::AtomicBool,
    stores: futures::lock::Mutex<Stores<E>>,
    clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
}

#[derive(Default)]
struct Queue {
    runs: Vec<Queued>,
    heights: u64,
    dropped: u64,
}

/// The provenance of the stored heights (cheap to clone): record as blocks are taken, read
/// for `explain`. [`Provenance::flush`] writes what was recorded; the engine runs it once a
/// second.
pub struct Provenance<E: StoreContext> {
    shared: Arc<Shared<E>>,
}

impl<E: StoreContext> Clone for Provenance<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<E: StoreContext> Provenance<E> {
    /// Opens (or creates) the store in partitions `{partition}-records` and
    /// `{partition}-table`; its clock stamps what is recorded.
    pub async fn open(context: E, partition: &str) -> Result<Self, ProvenanceError> {
        let table: Metadata<E, U64, Vec<u8>> = Metadata::init(
            context.child("table"),
            metadata::Config {
                partition: format!("{partition}-table"),
                codec_config: ((..=4096usize).into(), ()),
            },
        )
        .await
        .map_err(|error| ProvenanceError::Table {
            what: "opening",
            error,
        })?;
        let mut sections: BTreeMap<u64, Option<BitMap>> = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for key in table.keys() {
            let key = u64::from_be_bytes(
                key.as_ref()
                    .try_into()
                    .map_err(|_| ProvenanceError::Corrupt(0))?,
            );
            let value = table.get(&U64::new(key)).map(Vec::as_slice).unwrap_or(&[]);
            if key >= SOURCE_KEYS {
                let url =
                    String::from_utf8(value.to_vec()).map_err(|_| ProvenanceError::Corrupt(key))?;
                sources.insert(key - SOURCE_KEYS, url);
            } else if value.is_empty() {
                sections.insert(key, None);
            } else {
                let bits: BitMap = BitMap::decode_cfg(
                    bytes::Bytes::copy_from_slice(value),
                    &RangeCfg::from(..=ITEMS_PER_SECTION),
                )
                .map_err(|_| ProvenanceError::Corrupt(key))?;
                if bits.len() != ITEMS_PER_SECTION {
                    return Err(ProvenanceError::Corrupt(key));
                }
                sections.insert(key, Some(bits));
            }
        }
        // The table's source ids are dense from 0; a gap means a damaged table.
        let sources: Vec<String> = sources
            .into_iter()
            .enumerate()
            .map(|(expected, (id, url))| {
                if id == expected as u64 {
                    Ok(url)
                } else {
                    Err(ProvenanceError::Corrupt(SOURCE_KEYS + id))
                }
            })
            .collect::<Result<_, _>>()?;
        let bits: BTreeMap<u64, &Option<BitMap>> = sections
            .iter()
            .map(|(section, bits)| (*section, bits))
            .collect();
        let records = Ordinal::init(
            context.child("records"),
            ordinal::Config {
                partition: format!("{partition}-records"),
                items_per_blob: NonZeroU64::new(ITEMS_PER_SECTION).expect("non-zero"),
                write_buffer: NonZeroUsize::new(64 * 1024).expect("non-zero"),
                replay_buffer: NonZeroUsize::new(1024 * 1024).expect("non-zero"),
            },
            Some(bits),
        )
        .await
        .map_err(|error| ProvenanceError::Records {
            what: "opening",
            error,
        })?;
        let partial = sections
            .into_iter()
            .filter_map(|(section, bits)| bits.map(|bits| (section, bits)))
            .collect();
        let clock = context.child("clock");
        Ok(Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                stopped: std::sync::atomic::AtomicBool::new(false),
                stores: futures::lock::Mutex::new(Stores {
                    records: Some(records),
                    table: Some(table),
                    partial,
                    dirty: BTreeSet::new(),
                    sources,
                }),
                clock: Box::new(move || commonware_runtime::Clock::current(&clock)),
            }),
        })
    }

    /// [`Self::open`]; a store that does not open (damaged on disk) is removed and started
    /// empty, with a warning: the sources of the blocks stored so far are forgotten, which
    /// costs `explain` its "bytes" line for them and nothing else.
    pub async fn open_or_reset(context: E, partition: &str) -> Result<Self, ProvenanceError> {
        match Self::open(context.child("opening"), partition).await {
            Ok(provenance) => Ok(provenance),
            Err(err) => {
                warn!(%err, "the provenance store is damaged: it starts empty, and the sources of the blocks stored so far are forgotten");
                for part in ["records", "table"] {
                    match context.remove(&format!("{partition}-{part}"), None).await {
                        Ok(()) | Err(commonware_runtime::Error::PartitionMissing(_)) => {}
                        Err(error) => {
                            return Err(ProvenanceError::Records {
                                what: "removing a damaged store",
                                error: ordinal::Error::Runtime(error),
                            });
                        }
                    }
                }
                Self::open(context.child("reset"), partition).await
            }
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The time records are stamped with, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        (self.shared.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    }

    /// Records that `source` served the bytes of heights `first..=last` at `at_ms`, taken
    /// `how` (a later record of a height replaces an earlier one).
    pub fn record_at(&self, first: u64, last: u64, source: Option<&str>, how: How, at_ms: u64) {
        if last < first
            || self
                .shared
                .stopped
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let heights = last - first + 1;
        let mut queue = self.queue();
        if queue.heights.saturating_add(heights) > MAX_QUEUED_HEIGHTS
            || queue.runs.len() >= MAX_QUEUED_RUNS
        {
            queue.dropped = queue.dropped.saturating_add(heights);
            return;
        }
        queue.heights += heights;
        queue.runs.push(Queued {
            first,
            last,
            source: source.map(str::to_string),
            how,
            at_ms,
        });
    }

    /// [`Self::record_at`] now.
    pub fn record(&self, first: u64, last: u64, source: Option<&str>, how: How) {
        self.record_at(first, last, source, how, self.now_ms());
    }

    /// Writes what was recorded since the last flush, and syncs it.
    pub async fn flush(&self) -> Result<(), ProvenanceError> {
        let (runs, dropped) = {
            let mut queue = self.queue();
            queue.heights = 0;
            (
                std::mem::take(&mut queue.runs),
                std::mem::take(&mut queue.dropped),
            )
        };
        if dropped > 0 {
            warn!(
                heights = dropped,
                "provenance records dropped: more were taken in a second than the queue holds"
            );
        }
        let mut stores = self.shared.stores.lock().await;
        for run in runs {
            let source = match &run.source {
                Some(url) => stores.source_id(url),
                None => NO_SOURCE,
            };
            let record = encode(source, run.how, run.at_ms);
            for height in run.first..=run.last {
                stores.put(height, record.clone()).await?;
            }
        }
        stores.sync().await
    }

    /// Who served the bytes stored at `height`, if that was recorded (and not lost to a kill
    /// or a damaged record).
    pub async fn get(&self, height: u64) -> Result<Option<Served>, ProvenanceError> {
        let queued = self
            .queue()
            .runs
            .iter()
            .rev()
            .find(|run| run.first <= height && height <= run.last)
            .cloned();
        if let Some(run) = queued {
            return Ok(Some(Served {
                source: run.source,
                at_ms: run.at_ms,
                how: run.how,
            }));
        }
        self.shared.stores.lock().await.get(height).await
    }

    /// Flushes every [`FLUSH_EVERY`] until the store fails; a failure is logged and ends
    /// recording (the chain itself is unaffected).
    pub async fn run(self, context: impl commonware_runtime::Clock) {
        loop {
            context.sleep(FLUSH_EVERY).await;
            if let Err(err) = self.flush().await {
                warn!(%err, "the provenance store failed: the sources of blocks taken from now on are not recorded");
                self.shared
                    .stopped
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let mut queue = self.queue();
                queue.runs = Vec::new();
                queue.heights = 0;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_runtime::{Runner as _, Supervisor as _, deterministic};

    #[test]
    fn records_survive_a_restart_and_a_later_record_replaces_an_earlier_one() {
        deterministic::Runner::default().start(|context| async move {
            let provenance = Provenance::open(context.child("p"), "prov")
                .await
                .expect("open");
            provenance.record_at(1, 20_000, Some("ws://a"), How::CatchUp, 7);
            provenance.record_at(5, 5, Some("ws://b"), How::Repair, 9);
            provenance.record_at(20_001, 20_001, None, How::Checkpoint, 11);
            // Queued records are read before they are written.
            let five = provenance.get(5).await.expect("get").expect("recorded");
            assert_eq!(five.source.as_deref(), Some("ws://b"));
            provenance.flush().await.expect("flush");
            drop(provenance);

            let provenance = Provenance::open(context.child("q"), "prov")
                .await
                .expect("reopen");
            let one = provenance.get(1).await.expect("get").expect("recorded");
            assert_eq!(
                one,
                Served {
                    source: Some("ws://a".into()),
                    at_ms: 7,
                    how: How::CatchUp
                }
            );
            let five = provenance.get(5).await.expect("get").expect("recorded");
            assert_eq!(
                (five.source.as_deref(), five.how),
                (Some("ws://b"), How::Repair)
            );
            let top = provenance
                .get(20_001)
                .await
                .expect("get")
                .expect("recorded");
            assert_eq!((top.source, top.how), (None, How::Checkpoint));
            assert_eq!(provenance.get(20_002).await.expect("get"), None);
            assert_eq!(provenance.get(0).await.expect("get"), None);
            // A source seen after the restart gets the next id, not one already taken.
            provenance.record_at(30_000, 30_000, Some("ws://c"), How::Live, 13);
            provenance.flush().await.expect("flush");
            let c = provenance
                .get(30_000)
                .await
                .expect("get")
                .expect("recorded");
            assert_eq!(c.source.as_deref(), Some("ws://c"));
            assert_eq!(
                provenance
                    .get(1)
                    .await
                    .expect("get")
                    .expect("recorded")
                    .source
                    .as_deref(),
                Some("ws://a")
            );
        });
    }

    #[test]
    fn the_queue_is_bounded_in_runs_and_heights_and_says_what_it_dropped() {
        deterministic::Runner::default().start(|context| async move {
            let provenance = Provenance::open(context.child("p"), "prov")
                .await
                .expect("open");
            for height in 0..MAX_QUEUED_RUNS as u64 + 10 {
                provenance.record_at(height, height, Some("ws://a"), How::Live, 1);
            }
            provenance.record_at(
                1 << 40,
                (1 << 40) + MAX_QUEUED_HEIGHTS,
                None,
                How::CatchUp,
                2,
            );
            {
                let queue = provenance.queue();
                assert_eq!(queue.runs.len(), MAX_QUEUED_RUNS);
                assert_eq!(queue.dropped, 10 + MAX_QUEUED_HEIGHTS + 1);
            }
            provenance.flush().await.expect("flush");
            assert!(provenance.queue().runs.is_empty());
            assert!(provenance.get(0).await.expect("get").is_some());
            assert_eq!(
                provenance.get(MAX_QUEUED_RUNS as u64).await.expect("get"),
                None,
                "dropped"
            );
        });
    }

    #[test]
    fn a_damaged_table_is_reset_and_forgets_the_sources() {
        deterministic::Runner::default().start(|context| async move {
            let provenance = Provenance::open(context.child("p"), "prov")
                .await
                .expect("open");
            provenance.record_at(1, 3, Some("ws://a"), How::CatchUp, 7);
            provenance.flush().await.expect("flush");
            drop(provenance);
            // A source id with a gap before it: the table is damaged.
            let mut table: Metadata<_, U64, Vec<u8>> = Metadata::init(
                context.child("t"),
                metadata::Config {
                    partition: "prov-table".into(),
                    codec_config: ((..=4096usize).into(), ()),
                },
            )
            .await
            .expect("table");
            table.put(U64::new(SOURCE_KEYS + 5), b"ws://b".to_vec());
            table.sync().await.expect("sync");
            assert!(matches!(
                Provenance::open(context.child("q"), "prov").await,
                Err(ProvenanceError::Corrupt(_))
            ));
            let provenance = Provenance::open_or_reset(context.child("r"), "prov")
                .await
                .expect("reset");
            assert_eq!(provenance.get(1).await.expect("get"), None);
            provenance.record_at(4, 4, Some("ws://c"), How::Live, 8);
            provenance.flush().await.expect("flush");
            assert_eq!(
                provenance
                    .get(4)
                    .await
                    .expect("get")
                    .and_then(|served| served.source),
                Some("ws://c".into())
            );
        });
    }

    #[test]
    fn records_not_flushed_before_a_kill_are_gone_and_the_rest_read_back() {
        deterministic::Runner::default().start(|context| async move {
            let provenance = Provenance::open(context.child("p"), "prov")
                .await
                .expect("open");
            provenance.record_at(10, 12, Some("ws://a"), How::Live, 1);
            provenance.flush().await.expect("flush");
            // Written to the records but never synced, nor marked in the table.
            provenance.record_at(13, 13, Some("ws://a"), How::Live, 2);
            {
                let mut stores = provenance.shared.stores.lock().await;
                let run = provenance.queue().runs.pop().expect("queued");
                let record = encode(0, run.how, run.at_ms);
                stores.put(13, record).await.expect("put");
            }
            drop(provenance);
            let provenance = Provenance::open(context.child("q"), "prov")
                .await
                .expect("reopen");
            assert!(provenance.get(12).await.expect("get").is_some());
            assert_eq!(provenance.get(13).await.expect("get"), None);
        });
    }
}
