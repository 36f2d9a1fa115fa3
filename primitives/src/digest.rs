//! The 32-byte block digest shared by consensus (certificate payloads, marshal keys) and the
//! execution layer (keccak256 block hashes).

use alloy_primitives::B256;
use bytes::BufMut;
use commonware_codec::{Buf, Error as CodecError, FixedSize, Read, Write};
use commonware_math::algebra::Random;
use commonware_utils::{Array, Span};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    ops::{Deref, DerefMut},
};

/// A 32-byte digest: the keccak256 hash of a Tempo header, and the payload a finalization signs.
///
/// It implements commonware's [`commonware_cryptography::Digest`] so it can be the payload type of
/// simplex certificates and the key of marshal archives, and converts freely to and from
/// alloy's [`B256`].
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(pub B256);

impl Digest {
    /// The number of bytes in a digest.
    pub const LEN: usize = 32;

    /// Returns the digest as a fixed-size byte array.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0.0
    }
}

impl From<B256> for Digest {
    fn from(value: B256) -> Self {
        Self(value)
    }
}

impl From<Digest> for B256 {
    fn from(value: Digest) -> Self {
        value.0
    }
}

impl From<[u8; 32]> for Digest {
    fn from(value: [u8; 32]) -> Self {
        Self(B256::new(value))
    }
}

impl Write for Digest {
    fn write(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.0.as_slice());
    }
}

impl Read for Digest {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        if buf.remaining() < Self::LEN {
            return Err(CodecError::EndOfBuffer);
        }
        let mut out = [0u8; 32];
        buf.copy_to_slice(&mut out);
        Ok(Self::from(out))
    }
}

impl FixedSize for Digest {
    const SIZE: usize = Self::LEN;
}

impl Span for Digest {}

impl Array for Digest {}

impl AsRef<[u8]> for Digest {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl Deref for Digest {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl DerefMut for Digest {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_slice()
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Random for Digest {
    fn random(mut rng: impl CryptoRng) -> Self {
        let mut out = [0u8; 32];
        rng.fill_bytes(&mut out);
        Self::from(out)
    }
}

impl commonware_cryptography::Digest for Digest {
    const EMPTY: Self = Self(B256::ZERO);
}

#[cfg(test)]
mod tests {
    use super::*;
    use commonware_codec::{DecodeExt, Encode};

    #[test]
    fn codec_round_trip_is_the_raw_32_bytes() {
        let digest = Digest::from([7u8; 32]);
        let encoded = digest.encode();
        assert_eq!(encoded.as_ref(), &[7u8; 32]);
        assert_eq!(Digest::decode(encoded).expect("32 bytes decode"), digest);
    }

    #[test]
    fn short_input_is_rejected() {
        assert!(matches!(
            Digest::decode(vec![1u8; 31]),
            Err(CodecError::EndOfBuffer)
        ));
    }

    #[test]
    fn json_is_prefixed_hex() {
        let digest = Digest::from([0xabu8; 32]);
        let json = serde_json::to_string(&digest).expect("serializes");
        assert_eq!(json, format!("\"0x{}\"", "ab".repeat(32)));
        let back: Digest = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, digest);
    }
}
