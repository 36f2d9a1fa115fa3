//! In-memory DKG ceremonies on commonware's feldman-desmedt protocol: every dealer and player
//! runs its own state machine with its own ed25519 key, and messages are handed over directly
//! instead of through a network. Used by the devnet and by tests.
//!
//! - [`trusted_deal`]: a single dealer picks the secret (genesis only).
//! - [`reshare`]: the current share holders deal their shares to a new committee; the network
//!   identity stays the same.
//! - [`full_dkg`]: dealers contribute fresh randomness; the identity changes.

use commonware_cryptography::{
    Signer,
    bls12381::{
        dkg::feldman_desmedt::{self, Dealer, Info, Logs, Output, Player, Reveal},
        primitives::{group::Share, sharing::Mode, variant::MinSig},
    },
    ed25519::{PrivateKey, PublicKey},
};
use commonware_parallel::Sequential;
use commonware_utils::{N3f1, ordered::Set};
use rand::CryptoRng;
use std::collections::BTreeMap;

/// Why a ceremony did not produce an output.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// A committee listed the same key twice or was empty.
    #[error("invalid committee: {0}")]
    Committee(String),
    /// The round could not be set up (dealer not a previous player, too few dealers, ...).
    #[error("ceremony setup failed: {0}")]
    Setup(feldman_desmedt::Error),
    /// A player rejected a dealer's message.
    #[error("player {player} rejected dealer {dealer}: {reason}")]
    DealingRejected {
        /// The dealer's key.
        dealer: String,
        /// The player's key.
        player: String,
        /// Why.
        reason: String,
    },
    /// A dealer's signed log did not check out.
    #[error("dealer {0} produced a log that does not verify")]
    BadDealerLog(String),
    /// The players could not finalize the round.
    #[error("player {player} could not finalize: {reason}")]
    Finalize {
        /// The player's key.
        player: String,
        /// Why.
        reason: String,
    },
    /// Two players finished with different public outputs.
    #[error("players disagree on the ceremony output")]
    Disagreement,
}

/// The result of a ceremony: the public output and each player's private share.
#[derive(Clone, Debug)]
pub struct CeremonyOutput {
    /// The public output (polynomial, dealers, players).
    pub output: Output<MinSig, PublicKey>,
    /// Each player's share of the group secret.
    pub shares: BTreeMap<PublicKey, Share>,
}

/// Builds the ordered participant set of a committee.
pub fn committee_set(keys: &[PrivateKey]) -> Result<Set<PublicKey>, CeremonyError> {
    if keys.is_empty() {
        return Err(CeremonyError::Committee("committee is empty".into()));
    }
    Set::try_from(keys.iter().map(Signer::public_key).collect::<Vec<_>>())
        .map_err(|err| CeremonyError::Committee(format!("{err:?}")))
}

/// Genesis: one trusted dealer samples the secret and deals shares to `players`.
pub fn trusted_deal(
    rng: &mut impl CryptoRng,
    players: &[PrivateKey],
) -> Result<CeremonyOutput, CeremonyError> {
    let players = committee_set(players)?;
    let (output, shares) =
        feldman_desmedt::deal::<MinSig, PublicKey, N3f1>(rng, Mode::NonZeroCounter, players)
            .map_err(CeremonyError::Setup)?;
    Ok(CeremonyOutput {
        output,
        shares: shares.into_iter().collect(),
    })
}

/// Moves the shares of `previous` to `players`, keeping the group secret (and identity).
///
/// `dealers` are members of the previous committee with their shares; at least a quorum of the
/// previous committee must deal.
pub fn reshare(
    rng: &mut impl CryptoRng,
    namespace: &[u8],
    round: u64,
    previous: &Output<MinSig, PublicKey>,
    dealers: &[(PrivateKey, Share)],
    players: &[PrivateKey],
) -> Result<CeremonyOutput, CeremonyError> {
    let dealers = dealers
        .iter()
        .map(|(key, share)| (key.clone(), Some(share.clone())))
        .collect::<Vec<_>>();
    run(
        rng,
        namespace,
        round,
        Some(previous.clone()),
        &dealers,
        players,
    )
}

/// Runs a fresh DKG: `dealers` contribute random secrets, producing a new identity shared by
/// `players`.
pub fn full_dkg(
    rng: &mut impl CryptoRng,
    namespace: &[u8],
    round: u64,
    dealers: &[PrivateKey],
    players: &[PrivateKey],
) -> Result<CeremonyOutput, CeremonyError> {
    let dealers = dealers
        .iter()
        .map(|key| (key.clone(), None))
        .collect::<Vec<_>>();
    run(rng, namespace, round, None, &dealers, players)
}

fn run(
    rng: &mut impl CryptoRng,
    namespace: &[u8],
    round: u64,
    previous: Option<Output<MinSig, PublicKey>>,
    dealers: &[(PrivateKey, Option<Share>)],
    players: &[PrivateKey],
) -> Result<CeremonyOutput, CeremonyError> {
    let dealer_keys = dealers
        .iter()
        .map(|(key, _)| key.clone())
        .collect::<Vec<_>>();
    let dealer_set = committee_set(&dealer_keys)?;
    let player_set = committee_set(players)?;
    let info = Info::<MinSig, PublicKey>::new::<N3f1>(
        namespace,
        round,
        previous,
        Mode::NonZeroCounter,
        Reveal::V1,
        dealer_set,
        player_set,
    )
    .map_err(CeremonyError::Setup)?;

    let mut player_states = players
        .iter()
        .map(|key| {
            Player::new(info.clone(), key.clone())
                .map(|state| (key.public_key(), state))
                .map_err(CeremonyError::Setup)
        })
        .collect::<Result<BTreeMap<_, _>, _>>()?;

    let mut logs = Logs::<MinSig, PublicKey, N3f1>::new(info.clone());
    for (dealer_key, share) in dealers {
        let dealer_pk = dealer_key.public_key();
        let (mut dealer, pub_msg, priv_msgs) = Dealer::<MinSig, PrivateKey>::start::<N3f1>(
            &mut *rng,
            info.clone(),
            dealer_key.clone(),
            share.clone(),
        )
        .map_err(CeremonyError::Setup)?;
        for (player_pk, priv_msg) in priv_msgs {
            let Some(player) = player_states.get_mut(&player_pk) else {
                continue;
            };
            let ack = player
                .dealer_message::<N3f1>(dealer_pk.clone(), pub_msg.clone(), priv_msg)
                .map_err(|err| CeremonyError::DealingRejected {
                    dealer: dealer_pk.to_string(),
                    player: player_pk.to_string(),
                    reason: err.to_string(),
                })?;
            if let Some(ack) = ack {
                dealer
                    .receive_player_ack(player_pk.clone(), ack)
                    .map_err(|err| CeremonyError::DealingRejected {
                        dealer: dealer_pk.to_string(),
                        player: player_pk.to_string(),
                        reason: err.to_string(),
                    })?;
            }
        }
        let (signer, log) = dealer
            .finalize::<N3f1>()
            .check(&info)
            .ok_or_else(|| CeremonyError::BadDealerLog(dealer_pk.to_string()))?;
        logs.record(signer, log);
    }

    let mut output: Option<Output<MinSig, PublicKey>> = None;
    let mut shares = BTreeMap::new();
    for (player_pk, player) in player_states {
        let (player_output, share) = player
            .finalize::<N3f1>(&mut *rng, logs.clone(), &Sequential)
            .map_err(|err| CeremonyError::Finalize {
                player: player_pk.to_string(),
                reason: err.to_string(),
            })?;
        match &output {
            Some(agreed) if *agreed != player_output => return Err(CeremonyError::Disagreement),
            Some(_) => {}
            None => output = Some(player_output),
        }
        shares.insert(player_pk, share);
    }
    let output = output.ok_or_else(|| CeremonyError::Committee("no players".into()))?;
    Ok(CeremonyOutput { output, shares })
}
