//! A content hash of an executable file: the build identity that survives
//! copying the file to another machine (the local identity in
//! [`func_ref::build_identity`](crate::func_ref) includes the file's inode and
//! time stamp, which a copy does not keep).
//!
//! Not cryptographic: it tells builds apart, it does not defend against a
//! forged file (the far side trusts only its stdin; whoever can write files
//! in its cache directory can run code there anyway).

use std::io::{self, Read};
use std::path::Path;
use std::sync::OnceLock;

const PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes the file at `path` (its length and every byte).
pub(crate) fn hash_file(path: &Path) -> io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    loop {
        let n = fill(&mut file, &mut buf)?;
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

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn fill(file: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The path of the file this process runs.
pub(crate) fn current_exe() -> io::Result<std::path::PathBuf> {
    if cfg!(target_os = "linux") {
        Ok("/proc/self/exe".into())
    } else {
        std::env::current_exe()
    }
}

/// The content hash of this process's own executable, computed once.
pub(crate) fn own_hash() -> io::Result<u64> {
    static HASH: OnceLock<Result<u64, String>> = OnceLock::new();
    HASH.get_or_init(|| {
        current_exe()
            .and_then(|p| hash_file(&p))
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_files_hash_equal_and_one_changed_byte_differs() {
        let dir = std::env::temp_dir().join(format!("procpool-exe-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        let mut bytes: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(hash_file(&a).unwrap(), hash_file(&b).unwrap());
        bytes[2_999_999] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert_ne!(hash_file(&a).unwrap(), hash_file(&b).unwrap());
        bytes.push(0);
        std::fs::write(&b, &bytes[1..]).unwrap();
        assert_ne!(hash_file(&a).unwrap(), hash_file(&b).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(own_hash().is_ok());
    }
}
