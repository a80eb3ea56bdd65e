//! Naming a function across processes.
//!
//! A worker process is the same executable as its parent, re-executed, so every
//! function sits at the same offset from any fixed point of the executable even
//! though address-space randomisation moves the whole image. The parent sends
//! the offset of the task function, and of the monomorphised trampoline that
//! knows its argument and result types, from [`anchor`]; the worker adds its own
//! address of `anchor`.
//!
//! This is sound only in the identical binary, so the worker's handshake carries
//! a [`build_identity`] that the parent checks, and only for code of the main
//! executable (not `dlopen`ed libraries), which [`check_in_executable`] enforces.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::panic_info;
use crate::wire::{self, Status};

/// The fixed point all offsets are measured from.
#[inline(never)]
fn anchor() {}

/// A function and its trampoline, as offsets that mean the same in every
/// process running this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FnRef {
    pub(crate) func: u64,
    pub(crate) trampoline: u64,
}

/// Runs one job in a worker: decodes the argument, calls the function, encodes
/// the result into `out` (which holds a `RESULT` header with status `Ok`).
pub(crate) type Trampoline = unsafe fn(func: usize, args: &[u8], out: &mut Vec<u8>, max: u64);

impl FnRef {
    /// Names `f` for a worker process.
    pub(crate) fn new<A, R>(f: fn(A) -> R) -> Result<FnRef, String>
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        let func = f as usize;
        check_in_executable(func)?;
        let trampoline = trampoline::<A, R> as Trampoline as usize;
        Ok(FnRef {
            func: to_offset(func),
            trampoline: to_offset(trampoline),
        })
    }
}

/// The offset of any function of the main executable (checked).
pub(crate) fn offset_of(addr: usize) -> Result<u64, String> {
    check_in_executable(addr)?;
    Ok(to_offset(addr))
}

fn to_offset(addr: usize) -> u64 {
    addr.wrapping_sub(anchor as fn() as usize) as u64
}

/// Turns an offset from the parent into an address in this process.
pub(crate) fn to_address(offset: u64) -> usize {
    (anchor as fn() as usize).wrapping_add(offset as usize)
}

/// Runs one job in a worker: the function and trampoline the parent named
/// (offsets from [`FnRef::new`]) on the encoded `args`, appending the result
/// to `out` (which holds a `RESULT` header with status `Ok`).
///
/// # Safety
///
/// The handshake must have established that parent and worker run the same
/// build, and `func`/`trampoline` must be the offsets the parent produced
/// together with `FnRef::new`, which pairs a `fn(A) -> R` with
/// `trampoline::<A, R>`.
pub(crate) unsafe fn run_job(func: u64, trampoline: u64, args: &[u8], out: &mut Vec<u8>, max: u64) {
    // SAFETY: per this function's contract, `trampoline` names a
    // `Trampoline` of this build, and `func` the function it was made for.
    unsafe {
        let trampoline = std::mem::transmute::<usize, Trampoline>(to_address(trampoline));
        trampoline(to_address(func), args, out, max);
    }
}

/// The trampoline for `fn(A) -> R`.
///
/// # Safety
///
/// `func` must be the address of a `fn(A) -> R` in this process: the parent
/// named it with [`FnRef::new`] for exactly these `A` and `R`, and the handshake
/// proved the worker runs the same build.
unsafe fn trampoline<A, R>(func: usize, args: &[u8], out: &mut Vec<u8>, max: u64)
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: per this function's contract, `func` is a `fn(A) -> R` of this
    // build; fn pointers and usize have the same size on supported targets.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func) };
    let arg: A = match rmp_serde::from_slice(args) {
        Ok(a) => a,
        Err(e) => {
            wire::reset_result(out, Status::DecodeArgument);
            out.extend_from_slice(e.to_string().as_bytes());
            return;
        }
    };
    let value = match panic_info::catch(|| f(arg)) {
        Ok(v) => v,
        Err(p) => return encode_panic(out, p),
    };
    // Encoding runs user `Serialize` code, which may panic too.
    let encoded =
        panic_info::catch(|| rmp_serde::encode::write(&mut crate::buffer::Growing(out), &value));
    drop(value);
    match encoded {
        Ok(Ok(())) => {
            let size = (out.len() - wire::LEN_PREFIX) as u64;
            if size > max {
                wire::reset_result(out, Status::ResultTooLarge);
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&max.to_le_bytes());
            }
        }
        Ok(Err(e)) => {
            wire::reset_result(out, Status::EncodeResult);
            out.extend_from_slice(e.to_string().as_bytes());
        }
        Err(p) => encode_panic(out, p),
    }
}

fn encode_panic(out: &mut Vec<u8>, p: panic_info::Caught) {
    wire::reset_result(out, Status::Panicked);
    rmp_serde::encode::write(out, &(p.message, p.location)).expect("strings always encode");
}

/// Identifies this build of the executable. Equal in a parent and its workers
/// exactly when they run the same program file, byte for byte (a copy of it on
/// another machine included).
///
/// It is read from the running image, never from the file now at the path the
/// program was started by (see [`crate::image`]), so a worker started after a
/// deploy, which re-executes that same image, computes the same identity as
/// its parent.
///
/// Only a successful reading is kept: a failure (say, no descriptor free to
/// open the file) is returned, and the next call tries again.
pub(crate) fn build_identity() -> std::io::Result<u64> {
    static IDENTITY: OnceLock<u64> = OnceLock::new();
    if let Some(&identity) = IDENTITY.get() {
        return Ok(identity);
    }
    let mut h = Fnv::new();
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    // Differs between builds whose code layout differs.
    h.write_u64(to_offset(build_identity as fn() -> _ as usize));
    hash_running_image(&mut h)?;
    Ok(*IDENTITY.get_or_init(|| h.finish()))
}

/// How much of each end of the executable file the identity covers: the
/// program headers and the first code at the start, the symbol and section
/// tables (which move with any change to the code) at the end.
const IDENTITY_SPAN: u64 = 64 * 1024;

fn hash_running_image(h: &mut Fnv) -> std::io::Result<()> {
    use crate::image::read_exact_at;
    let file = crate::image::open()?;
    let len = file.metadata()?.len();
    h.write_u64(len);
    let span = IDENTITY_SPAN.min(len);
    let mut buf = vec![0u8; span as usize];
    read_exact_at(&file, &mut buf, 0)?;
    h.write(&buf);
    read_exact_at(&file, &mut buf, len - span)?;
    h.write(&buf);
    Ok(())
}

/// FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.write(&v.to_le_bytes());
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Refuses addresses outside the main executable's loaded segments: a worker
/// re-executes only the main executable, so code from a `dlopen`ed library
/// would not be at the same offset there.
#[cfg(target_os = "linux")]
pub(crate) fn check_in_executable(addr: usize) -> Result<(), String> {
    let ranges = main_executable_ranges();
    let inside = |a: usize| ranges.iter().any(|r| r.contains(&a));
    if !inside(anchor as fn() as usize) {
        return Err(
            "procpool is not linked into the main executable (it is in a shared library); \
                    worker processes re-execute the main executable only"
                .into(),
        );
    }
    if !inside(addr) {
        return Err(format!(
            "function at {addr:#x} is not in the main executable (dynamically loaded code cannot \
             be named in a worker process)"
        ));
    }
    Ok(())
}

/// On other platforms the check is left to the build-identity handshake.
#[cfg(not(target_os = "linux"))]
pub(crate) fn check_in_executable(_addr: usize) -> Result<(), String> {
    Ok(())
}

#[cfg(target_os = "linux")]
fn main_executable_ranges() -> &'static [std::ops::Range<usize>] {
    static RANGES: OnceLock<Vec<std::ops::Range<usize>>> = OnceLock::new();
    RANGES.get_or_init(|| {
        unsafe extern "C" fn first_object(
            info: *mut libc::dl_phdr_info,
            _size: libc::size_t,
            data: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: `data` is the `&mut Vec` passed below; `info` and its
            // program-header array are valid for the duration of this callback,
            // as dl_iterate_phdr guarantees.
            unsafe {
                let ranges = &mut *(data as *mut Vec<std::ops::Range<usize>>);
                let info = &*info;
                for i in 0..info.dlpi_phnum as usize {
                    let ph = &*info.dlpi_phdr.add(i);
                    if ph.p_type == libc::PT_LOAD {
                        let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                        ranges.push(start..start + ph.p_memsz as usize);
                    }
                }
            }
            1 // the first object reported is the main program: stop there
        }
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
        // SAFETY: the callback only reads the headers it is given and writes to
        // `ranges`, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(
                Some(first_object),
                &mut ranges as *mut Vec<std::ops::Range<usize>> as *mut libc::c_void,
            );
        }
        ranges
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn offsets_round_trip_to_the_same_address() {
        let r = FnRef::new(double).unwrap();
        assert_eq!(to_address(r.func), double as fn(u32) -> u32 as usize);
    }

    #[test]
    fn trampoline_runs_and_encodes() {
        let r = FnRef::new(double).unwrap();
        let args = rmp_serde::to_vec(&21u32).unwrap();
        let mut out = Vec::new();
        wire::begin_result(&mut out, 1, Status::Ok);
        // SAFETY: both offsets were produced by FnRef::new in this process.
        unsafe {
            let t: Trampoline = std::mem::transmute::<usize, Trampoline>(to_address(r.trampoline));
            t(to_address(r.func), &args, &mut out, u64::MAX);
        }
        wire::finish_result(&mut out, 0, 1, 0);
        let (body, _) = wire::split_frame(&out, u64::MAX).unwrap().unwrap();
        match wire::FromWorker::decode(&out[body]).unwrap() {
            wire::FromWorker::Result {
                status, payload, ..
            } => {
                assert_eq!(status, Status::Ok);
                assert_eq!(rmp_serde::from_slice::<u32>(payload).unwrap(), 42);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn identity_is_stable_within_a_process() {
        assert_eq!(build_identity().unwrap(), build_identity().unwrap());
    }
}
