//! The committee side of finalization: each member signs a finalize vote with its own share, and
//! a quorum of votes is assembled into the recovered threshold certificate that
//! [`cairn_epoch::FinalizationVerifier`] checks. Used by the devnet, tests and benchmarks; the group
//! secret is never reconstructed.

use cairn_epoch::{Finalization, FinalizationScheme};
use cairn_primitives::Digest;
use commonware_consensus::{
    simplex::types::{Finalize, Proposal},
    types::{Round, View},
};
use commonware_cryptography::{
    bls12381::{
        dkg::feldman_desmedt::Output,
        primitives::{group::Share, variant::MinSig},
    },
    ed25519::PublicKey,
};
use commonware_parallel::Sequential;
use commonware_utils::{
    N3f1,
    iter::NonEmpty,
    ordered::{Quorum, Set},
};
use std::collections::BTreeMap;

/// Why a committee could not be set up or could not sign.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignerError {
    /// The sharing does not match the committee (size or threshold).
    #[error(
        "sharing of {total} participants with threshold {threshold} does not fit a committee of {players}"
    )]
    SharingMismatch {
        /// Participants in the sharing.
        total: u32,
        /// Threshold of the sharing.
        threshold: u32,
        /// Committee size.
        players: usize,
    },
    /// A share does not belong to the committee member it was given for (wrong index, or a
    /// secret that does not match the member's partial public key).
    #[error("share for {0} does not belong to that member")]
    ShareMismatch(String),
    /// A requested signer is not a member with a share.
    #[error("{0} is not a committee member with a share")]
    UnknownSigner(String),
    /// Fewer distinct signers than the quorum.
    #[error("{got} signers, below the quorum of {quorum}")]
    BelowQuorum {
        /// Distinct signers requested.
        got: usize,
        /// Quorum.
        quorum: u32,
    },
    /// commonware refused to assemble the votes.
    #[error("could not assemble the certificate: {0}")]
    Assembly(String),
}

/// One epoch's committee, able to produce finalization certificates.
#[derive(Clone, Debug)]
pub struct CommitteeSigner {
    players: Set<PublicKey>,
    members: BTreeMap<PublicKey, FinalizationScheme>,
}

impl CommitteeSigner {
    /// A committee for the players of `output`, each signing with its share from `shares`.
    /// Players without a share in `shares` cannot sign.
    pub fn new(
        namespace: &[u8],
        output: &Output<MinSig, PublicKey>,
        shares: &BTreeMap<PublicKey, Share>,
    ) -> Result<Self, SignerError> {
        let players = output.players().clone();
        let sharing = output.public();
        let total = sharing.total().get();
        let threshold = sharing.required();
        if u32::try_from(players.len()).ok() != Some(total) || threshold != players.quorum::<N3f1>()
        {
            return Err(SignerError::SharingMismatch {
                total,
                threshold,
                players: players.len(),
            });
        }
        let mut members = BTreeMap::new();
        for (key, share) in shares {
            let Some(position) = players.position(key) else {
                continue;
            };
            // A member signs at its own position; checking it first also keeps commonware from
            // panicking on an out-of-range index (shares may come from disk).
            if share.index.get() as usize != position {
                return Err(SignerError::ShareMismatch(key.to_string()));
            }
            let scheme = FinalizationScheme::signer(
                namespace,
                players.clone(),
                sharing.clone(),
                share.clone(),
            )
            .ok_or_else(|| SignerError::ShareMismatch(key.to_string()))?;
            members.insert(key.clone(), scheme);
        }
        Ok(Self { players, members })
    }

    /// The committee's players, in participant order.
    pub const fn players(&self) -> &Set<PublicKey> {
        &self.players
    }

    /// Votes needed for a certificate.
    pub fn quorum(&self) -> u32 {
        self.players.quorum::<N3f1>()
    }

    /// Signs a finalize vote from each of `signers` for `payload` at `round` and assembles them.
    pub fn finalize(
        &self,
        round: Round,
        parent: View,
        payload: Digest,
        signers: &[PublicKey],
    ) -> Result<Finalization, SignerError> {
        let proposal = Proposal::new(round, parent, payload);
        let mut votes = BTreeMap::new();
        for signer in signers {
            let scheme = self
                .members
                .get(signer)
                .ok_or_else(|| SignerError::UnknownSigner(signer.to_string()))?;
            let vote = Finalize::sign(scheme, proposal.clone())
                .ok_or_else(|| SignerError::UnknownSigner(signer.to_string()))?;
            votes.insert(signer.clone(), vote);
        }
        let quorum = self.quorum();
        if votes.len() < quorum as usize {
            return Err(SignerError::BelowQuorum {
                got: votes.len(),
                quorum,
            });
        }
        let (first, _) = self
            .members
            .first_key_value()
            .expect("a committee with a quorum of votes has members");
        let assembler = &self.members[first];
        let votes =
            NonEmpty::try_new(votes.into_values()).expect("votes hold at least a quorum (>= 1)");
        Finalization::from_owned_finalizes(assembler, votes, &Sequential)
            .map_err(|err| SignerError::Assembly(format!("{err:?}")))
    }
}
