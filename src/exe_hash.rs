//! A content hash of an executable file: the build identity that survives
//! copying the file to another machine (the local identity in
//! [`func_ref::build_identity`](crate::func_ref) includes the file's inode and
//! time stamp, which a copy does not keep).
//!
//! Not cryptographic: it tells builds apart, it does not defend against a
//! forged file (the far side trusts only its stdin; whoever can write files
//! in its cache directory can run code there anyway).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes `file` (its length and every byte) from its start, with positioned reads (so a descriptor that
/// shares its offset, like the running image's on the portable backend, is
/// left alone).
pub(crate) fn hash_file(file: &std::fs::File) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    loop {
        let n = fill(file, len, &mut buf)?;
        if n == 0 {
            break;
        }
        // Words keep this fast enough to run at every remote worker's start;
        // whole buffers (only the last one short) make it independent of how
        // the reads happen to split.
        let mut chunks = buf[..n].chunks_exact(8);
        for w in &mut chunks {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(PRIME).rotate_left(23);
        }
        for &b in chunks.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(PRIME);
        }
        len += n as u64;
    }
    Ok((h ^ len).wrapping_mul(PRIME))
}

/// Reads from `at` until `buf` is full or the file ends; returns the count.
fn fill(file: &std::fs::File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The content hash of this process's own running executable, computed once.
pub(crate) fn own_hash() -> io::Result<u64> {
    static HASH: OnceLock<Result<u64, String>> = OnceLock::new();
    HASH.get_or_init(|| {
        crate::image::open()
            .and_then(|f| hash_file(&f))
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_path(path: &std::path::Path) -> io::Result<u64> {
        hash_file(&std::fs::File::open(path)?)
    }

    #[test]
    fn equal_files_hash_equal_and_one_changed_byte_differs() {
        let dir = std::env::temp_dir().join(format!("procpool-exe-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let mut bytes: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(hash_path(&a).unwrap(), hash_path(&b).unwrap());
        bytes[2_999_999] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert_ne!(hash_path(&a).unwrap(), hash_path(&b).unwrap());
        bytes.push(0);
        std::fs::write(&b, &bytes[1..]).unwrap();
        assert_ne!(hash_path(&a).unwrap(), hash_path(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(own_hash().is_ok());
    }
}
