//! MEGA's file fingerprint, the `c` attribute (mega-reference §5.10): CRC32 samples of the content
//! and the modification time. Official clients show the mtime they read from it, so every file we
//! upload carries one; we also read the mtime back from it for files other clients uploaded.

use std::io;

use crate::content::ReadExactAt;

use crate::crypto::mega::{b64_decode, b64_encode};

/// The fingerprint of `file` (its first `size` bytes) with modification time `mtime` (seconds).
pub fn fingerprint(file: &impl ReadExactAt, size: u64, mtime: i64) -> io::Result<String> {
    let mut out = crc_part(file, size)?.to_vec();
    out.extend(serialize_mtime(mtime));
    Ok(b64_encode(&out))
}

/// The fingerprint `c` with its mtime replaced, CRC kept: what a metadata-only change (utimens)
/// writes without reading the content again.
pub fn with_mtime(c: &str, mtime: i64) -> Option<String> {
    let raw = b64_decode(c).ok()?;
    let crc = raw.get(..16)?;
    let mut out = crc.to_vec();
    out.extend(serialize_mtime(mtime));
    Some(b64_encode(&out))
}

/// The mtime (seconds) a fingerprint carries.
pub fn mtime_of(c: &str) -> Option<i64> {
    let raw = b64_decode(c).ok()?;
    let rest = raw.get(16..)?;
    let (&n, bytes) = rest.split_first()?;
    let n = usize::from(n);
    if n > 8 || bytes.len() < n {
        return None;
    }
    let mut le = [0u8; 8];
    le[..n].copy_from_slice(&bytes[..n]);
    Some(i64::from_le_bytes(le))
}

fn serialize_mtime(mtime: i64) -> Vec<u8> {
    // Clamped like the webclient: official clients read an unsigned 32-bit-ish value.
    let t = mtime.clamp(0, u32::MAX as i64) as u64;
    let bytes = t.to_le_bytes();
    let n = 8 - (t.leading_zeros() / 8) as usize;
    let mut out = vec![n as u8];
    out.extend_from_slice(&bytes[..n]);
    out
}

fn crc_part(file: &impl ReadExactAt, size: u64) -> io::Result<[u8; 16]> {
    let mut crc = [0u8; 16];
    if size <= 16 {
        file.read_exact_at(&mut crc[..size as usize], 0)?;
        return Ok(crc);
    }
    if size <= 8192 {
        let mut data = vec![0u8; size as usize];
        file.read_exact_at(&mut data, 0)?;
        for i in 0..4u64 {
            let (a, b) = ((i * size / 4) as usize, ((i + 1) * size / 4) as usize);
            let c = crc32fast::hash(&data[a..b]);
            crc[i as usize * 4..][..4].copy_from_slice(&c.to_be_bytes());
        }
        return Ok(crc);
    }
    let mut window = [0u8; 64];
    for i in 0..4u64 {
        let mut h = crc32fast::Hasher::new();
        for j in 0..32u64 {
            let off = ((size - 64) * (i * 32 + j) / 127).min(size - 64);
            file.read_exact_at(&mut window, off)?;
            h.update(&window);
        }
        crc[i as usize * 4..][..4].copy_from_slice(&h.finalize().to_be_bytes());
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn mtime_round_trips_and_is_replaced_without_touching_the_crc() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let c = fingerprint(&f, 10_000, 1_700_000_123).unwrap();
        assert_eq!(mtime_of(&c), Some(1_700_000_123));
        let c2 = with_mtime(&c, 5).unwrap();
        assert_eq!(mtime_of(&c2), Some(5));
        assert_eq!(
            b64_decode(&c).unwrap()[..16],
            b64_decode(&c2).unwrap()[..16]
        );
        assert_eq!(mtime_of(&with_mtime(&c, 0).unwrap()), Some(0));
        assert_ne!(fingerprint(&f, 9_999, 5).unwrap(), c2);
    }

    #[test]
    fn small_files_carry_their_bytes() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"abc").unwrap();
        let raw = b64_decode(&fingerprint(&f, 3, 0).unwrap()).unwrap();
        assert_eq!(&raw[..16], b"abc\0\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&raw[16..], &[0]);
    }
}
