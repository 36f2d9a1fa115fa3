//! Real signed transactions for devnet blocks.
//!
//! Every block from height 1 carries [`TRANSACTIONS_PER_BLOCK`] transactions signed with local
//! secp256k1 keys through alloy's signer: EIP-1559 transfers, Tempo's own type 0x76 (a batch of
//! calls) and legacy EIP-155 transfers, in turn. The `g`-th transaction of the chain is sent by
//! sender `g % SENDERS` with nonce `g / SENDERS`, so nonces are sequential per sender without any
//! state to keep across restarts, and a block's transactions follow from its height alone.

use alloy_consensus::{SignableTransaction, TxEip1559, TxLegacy};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256, keccak256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use tempo_primitives::{TempoSignature, TempoTransaction, TempoTxEnvelope, transaction::Call};

/// Transactions in every block after genesis.
pub const TRANSACTIONS_PER_BLOCK: u64 = 3;
/// Number of sender accounts.
pub const SENDERS: u64 = 8;
/// Gas of a plain transfer.
const TRANSFER_GAS: u64 = 21_000;
/// Gas limit of a Tempo call batch.
const TEMPO_CALL_GAS: u64 = 60_000;

/// The kinds of transaction the devnet signs, in the order they rotate through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionKind {
    /// EIP-1559 transfer (type 0x02).
    Eip1559,
    /// Tempo transaction with two calls (type 0x76).
    Tempo,
    /// Legacy transfer with EIP-155 replay protection (type 0x00).
    Legacy,
}

impl TransactionKind {
    const ROTATION: [Self; 3] = [Self::Eip1559, Self::Tempo, Self::Legacy];

    /// The kind of the chain's `index`-th transaction.
    pub const fn of(index: u64) -> Self {
        Self::ROTATION[(index % 3) as usize]
    }
}

/// Why a transaction could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing transaction {index} failed: {error}")]
pub struct SigningError {
    /// The chain-wide index of the transaction.
    pub index: u64,
    /// The signer's error.
    pub error: alloy_signer::Error,
}

/// Builds and signs the transactions of each devnet height.
#[derive(Clone, Debug)]
pub struct TransactionFactory {
    chain_id: u64,
    base_fee: u64,
    senders: Vec<PrivateKeySigner>,
}

impl TransactionFactory {
    /// The factory of chain `chain_id`. Sender keys are derived from the chain id: they are
    /// devnet accounts, not secrets.
    pub fn new(chain_id: u64, base_fee: u64) -> Self {
        let senders = (0..SENDERS)
            .map(|index| sender_key(chain_id, index))
            .collect();
        Self {
            chain_id,
            base_fee,
            senders,
        }
    }

    /// The sender accounts' addresses.
    pub fn sender_addresses(&self) -> Vec<Address> {
        self.senders.iter().map(PrivateKeySigner::address).collect()
    }

    /// The signed transactions of `height` (none for genesis).
    pub fn transactions(&self, height: u64) -> Result<Vec<TempoTxEnvelope>, SigningError> {
        let Some(first) = height.checked_sub(1) else {
            return Ok(Vec::new());
        };
        (0..TRANSACTIONS_PER_BLOCK)
            .map(|offset| self.transaction(first * TRANSACTIONS_PER_BLOCK + offset))
            .collect()
    }

    /// Gas the transactions of a block use (each uses its whole limit).
    pub fn gas_used(transactions: &[TempoTxEnvelope]) -> u64 {
        use alloy_consensus::Transaction as _;
        transactions.iter().map(|tx| tx.gas_limit()).sum()
    }

    /// The chain's `index`-th transaction.
    fn transaction(&self, index: u64) -> Result<TempoTxEnvelope, SigningError> {
        let sender = &self.senders[(index % SENDERS) as usize];
        let recipient = self.senders[((index + 1) % SENDERS) as usize].address();
        let nonce = index / SENDERS;
        let value = U256::from(1 + index % 1000);
        let max_fee_per_gas = u128::from(self.base_fee) * 2;
        let max_priority_fee_per_gas = 1_000_000;
        let sign = |hash: B256| {
            sender
                .sign_hash_sync(&hash)
                .map_err(|error| SigningError { index, error })
        };
        Ok(match TransactionKind::of(index) {
            TransactionKind::Eip1559 => {
                let tx = TxEip1559 {
                    chain_id: self.chain_id,
                    nonce,
                    gas_limit: TRANSFER_GAS,
                    max_fee_per_gas,
                    max_priority_fee_per_gas,
                    to: TxKind::Call(recipient),
                    value,
                    ..Default::default()
                };
                let signature = sign(tx.signature_hash())?;
                TempoTxEnvelope::Eip1559(tx.into_signed(signature))
            }
            TransactionKind::Tempo => {
                let tx = TempoTransaction {
                    chain_id: self.chain_id,
                    max_priority_fee_per_gas,
                    max_fee_per_gas,
                    gas_limit: TEMPO_CALL_GAS,
                    calls: vec![
                        Call {
                            to: TxKind::Call(recipient),
                            value,
                            input: Bytes::new(),
                        },
                        Call {
                            to: TxKind::Call(sender.address()),
                            value: U256::ZERO,
                            input: Bytes::from(index.to_be_bytes().to_vec()),
                        },
                    ],
                    nonce,
                    ..Default::default()
                };
                let signature = sign(tx.signature_hash())?;
                TempoTxEnvelope::AA(tx.into_signed(TempoSignature::from(signature)))
            }
            TransactionKind::Legacy => {
                let tx = TxLegacy {
                    chain_id: Some(self.chain_id),
                    nonce,
                    gas_price: max_fee_per_gas,
                    gas_limit: TRANSFER_GAS,
                    to: TxKind::Call(recipient),
                    value,
                    input: Bytes::new(),
                };
                let signature = sign(tx.signature_hash())?;
                TempoTxEnvelope::Legacy(tx.into_signed(signature))
            }
        })
    }
}

/// The `index`-th sender key of chain `chain_id`: the first valid secp256k1 scalar in the hash
/// chain `keccak256("cairn devnet sender" || chain_id || index || attempt)`.
fn sender_key(chain_id: u64, index: u64) -> PrivateKeySigner {
    let mut attempt = 0u64;
    loop {
        let seed = keccak256(
            [
                b"cairn devnet sender".as_slice(),
                &chain_id.to_be_bytes(),
                &index.to_be_bytes(),
                &attempt.to_be_bytes(),
            ]
            .concat(),
        );
        // A hash is a valid scalar except with probability about 2^-128.
        if let Ok(signer) = PrivateKeySigner::from_bytes(&seed) {
            return signer;
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{Transaction as _, Typed2718 as _, transaction::SignerRecoverable};
    use alloy_eips::eip2718::{Decodable2718, Encodable2718};
    use std::collections::HashMap;

    #[test]
    fn nonces_are_sequential_per_sender_and_signatures_recover() {
        let factory = TransactionFactory::new(1337, 10_000_000_000);
        let senders = factory.sender_addresses();
        let mut next_nonce: HashMap<Address, u64> = HashMap::new();
        let mut kinds = Vec::new();
        for height in 0..=20 {
            let transactions = factory.transactions(height).expect("signs");
            let expected = if height == 0 {
                0
            } else {
                TRANSACTIONS_PER_BLOCK
            };
            assert_eq!(transactions.len() as u64, expected, "height {height}");
            for tx in transactions {
                let sender = tx.recover_signer().expect("signature recovers");
                assert!(senders.contains(&sender));
                let nonce = next_nonce.entry(sender).or_default();
                assert_eq!(tx.nonce(), *nonce, "sender {sender} at height {height}");
                *nonce += 1;
                assert_eq!(tx.chain_id(), Some(1337));
                kinds.push(tx.ty());
                let encoded = tx.encoded_2718();
                let decoded =
                    TempoTxEnvelope::decode_2718(&mut encoded.as_slice()).expect("decodes");
                assert_eq!(decoded, tx);
            }
        }
        for ty in [0x00, 0x02, 0x76] {
            assert!(kinds.contains(&ty), "type {ty:#x} is produced");
        }
    }

    #[test]
    fn transactions_depend_only_on_the_height() {
        let one = TransactionFactory::new(7, 1);
        let two = TransactionFactory::new(7, 1);
        assert_eq!(
            one.transactions(9).expect("signs"),
            two.transactions(9).expect("signs")
        );
        let other_chain = TransactionFactory::new(8, 1);
        assert_ne!(
            one.transactions(9).expect("signs"),
            other_chain.transactions(9).expect("signs")
        );
    }
}
