//! The per-file checksums a `backup_manifest` records, as `pg_basebackup
//! --manifest-checksums` offers them.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha224, Sha256, Sha384, Sha512};

use crate::manifest::hex;

/// The checksum algorithm of the files listed in `backup_manifest`. The manifest's own
/// checksum is always SHA-256, as PostgreSQL's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ManifestChecksum {
    /// No per-file checksum: the manifest records sizes only.
    None,
    /// CRC-32C (Castagnoli), hardware accelerated; `pg_basebackup`'s default.
    #[default]
    Crc32c,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl ManifestChecksum {
    /// Every algorithm, in the order `pg_basebackup` documents them.
    pub const ALL: [ManifestChecksum; 6] = [
        ManifestChecksum::None,
        ManifestChecksum::Crc32c,
        ManifestChecksum::Sha224,
        ManifestChecksum::Sha256,
        ManifestChecksum::Sha384,
        ManifestChecksum::Sha512,
    ];

    /// The name `backup_manifest` and `--manifest-checksums` use (`CRC32C`, `SHA256`, `NONE`).
    pub fn name(self) -> &'static str {
        match self {
            ManifestChecksum::None => "NONE",
            ManifestChecksum::Crc32c => "CRC32C",
            ManifestChecksum::Sha224 => "SHA224",
            ManifestChecksum::Sha256 => "SHA256",
            ManifestChecksum::Sha384 => "SHA384",
            ManifestChecksum::Sha512 => "SHA512",
        }
    }

    /// A running checksum of this algorithm; `None` for [`ManifestChecksum::None`].
    pub(crate) fn start(self) -> Option<Checksummer> {
        Some(match self {
            ManifestChecksum::None => return None,
            ManifestChecksum::Crc32c => Checksummer::Crc32c(0),
            ManifestChecksum::Sha224 => Checksummer::Sha224(Sha224::new()),
            ManifestChecksum::Sha256 => Checksummer::Sha256(Sha256::new()),
            ManifestChecksum::Sha384 => Checksummer::Sha384(Sha384::new()),
            ManifestChecksum::Sha512 => Checksummer::Sha512(Sha512::new()),
        })
    }
}

impl fmt::Display for ManifestChecksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of [`ManifestChecksum::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown manifest checksum algorithm {0:?} (expected NONE, CRC32C, SHA224, SHA256, SHA384 or SHA512)")]
pub struct UnknownChecksum(pub String);

impl FromStr for ManifestChecksum {
    type Err = UnknownChecksum;

    /// Parses a name as `pg_basebackup` does: case-insensitively.
    fn from_str(name: &str) -> Result<ManifestChecksum, UnknownChecksum> {
        ManifestChecksum::ALL
            .into_iter()
            .find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownChecksum(name.to_owned()))
    }
}

/// A checksum being computed, fed in file order.
#[derive(Clone)]
pub(crate) enum Checksummer {
    Crc32c(u32),
    Sha224(Sha224),
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Checksummer {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Checksummer::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, data),
            Checksummer::Sha224(h) => h.update(data),
            Checksummer::Sha256(h) => h.update(data),
            Checksummer::Sha384(h) => h.update(data),
            Checksummer::Sha512(h) => h.update(data),
        }
    }

    /// The checksum in hex as the manifest records it; a CRC-32C is written as PostgreSQL
    /// writes it, its four bytes in the machine's order.
    pub(crate) fn finish(self) -> String {
        match self {
            Checksummer::Crc32c(crc) => hex(&crc.to_ne_bytes()),
            Checksummer::Sha224(h) => hex(&h.finalize()),
            Checksummer::Sha256(h) => hex(&h.finalize()),
            Checksummer::Sha384(h) => hex(&h.finalize()),
            Checksummer::Sha512(h) => hex(&h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for algorithm in ManifestChecksum::ALL {
            assert_eq!(algorithm.name().parse(), Ok(algorithm));
        }
        assert_eq!("crc32c".parse(), Ok(ManifestChecksum::Crc32c));
        assert!("MD5".parse::<ManifestChecksum>().is_err());
    }

    #[test]
    fn crc32c_matches_the_standard_check_value_split_anywhere() {
        // The CRC-32C check value of "123456789" is 0xe3069283.
        let mut sum = ManifestChecksum::Crc32c.start().unwrap();
        sum.update(b"1234");
        sum.update(b"56789");
        assert_eq!(sum.finish(), hex(&0xe306_9283_u32.to_ne_bytes()));
    }
}
