//! Helpers shared by the integration tests: process inspection (via /proc on
//! Unix, process handles on Windows), waiting, temp dirs.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How a worker that called `std::process::abort` ends, as the pair
/// `(code, signal)` of `TaskError::WorkerDied`: SIGABRT on Unix; on Windows
/// Rust's abort is a fail-fast exception, exit code 0xC0000409.
#[cfg(unix)]
pub const ABORTED: (Option<i32>, Option<i32>) = (None, Some(libc::SIGABRT));
#[cfg(windows)]
pub const ABORTED: (Option<i32>, Option<i32>) = (Some(0xC000_0409_u32 as i32), None);

/// How a worker that wrote through a null pointer ends: SIGSEGV on Unix, the
/// access violation NTSTATUS 0xC0000005 on Windows.
#[cfg(unix)]
pub const SEGFAULTED: (Option<i32>, Option<i32>) = (None, Some(libc::SIGSEGV));
#[cfg(windows)]
pub const SEGFAULTED: (Option<i32>, Option<i32>) = (Some(0xC000_0005_u32 as i32), None);

/// How a worker killed from outside ends: SIGKILL on Unix; on Windows
/// `TerminateProcess`, with the exit code the killer chose (1, as std's
/// `Child::kill` and [`kill`] here use).
#[cfg(unix)]
pub const KILLED: (Option<i32>, Option<i32>) = (None, Some(libc::SIGKILL));
#[cfg(windows)]
pub const KILLED: (Option<i32>, Option<i32>) = (Some(1), None);

/// Kills process `pid` at once (SIGKILL; `TerminateProcess` with code 1).
/// `true` if the kill was delivered.
pub fn kill(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: kill(2) with a pid of a process we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) == 0 }
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, TerminateProcess, PROCESS_TERMINATE,
        };
        // SAFETY: the handle is checked, used once, and closed.
        unsafe {
            let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
            if h.is_null() {
                return false;
            }
            let killed = TerminateProcess(h, 1) != 0;
            CloseHandle(h);
            killed
        }
    }
}

/// True while `pid` is a running process (Windows: one that has not exited).
#[cfg(windows)]
pub fn is_running(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_TIMEOUT};
    use windows_sys::Win32::System::Threading::{
        OpenProcess, WaitForSingleObject, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
    };
    // SAFETY: the handle is checked, used once, and closed.
    unsafe {
        let h = OpenProcess(
            PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION,
            0,
            pid,
        );
        if h.is_null() {
            return false;
        }
        let running = WaitForSingleObject(h, 0) == WAIT_TIMEOUT;
        CloseHandle(h);
        running
    }
}

/// The number of handles this process has open (its descriptor count).
///
/// Wine answers `GetProcessHandleCount` with 0, so where it does, the handle
/// values that name an open handle are counted instead (Wine hands out the
/// lowest free value, so a test process's handles stay far below the range
/// probed; that they do is checked).
#[cfg(windows)]
pub fn handle_count() -> usize {
    use windows_sys::Win32::Foundation::{GetHandleInformation, HANDLE};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};
    let mut n = 0u32;
    // SAFETY: queries this process's own handle count into `n`.
    assert!(unsafe { GetProcessHandleCount(GetCurrentProcess(), &mut n) } != 0);
    if n > 0 {
        return n as usize;
    }
    const VALUES: usize = 0x1000;
    let open = |v: usize| {
        let mut flags = 0u32;
        // SAFETY: only asks whether the value names an open handle; nothing
        // is used or changed.
        unsafe { GetHandleInformation((v * 4) as HANDLE, &mut flags) != 0 }
    };
    assert!(
        !(VALUES - 64..VALUES).any(open),
        "handles beyond the probed range: the count would be wrong"
    );
    (1..VALUES).filter(|&v| open(v)).count()
}

/// When process `pid` (this process for `None`) was created, as a
/// FILETIME count; `None` if it cannot be asked.
#[cfg(windows)]
fn created_at(pid: Option<u32>) -> Option<u64> {
    use windows_sys::Win32::Foundation::{CloseHandle, FILETIME};
    use windows_sys::Win32::System::Threading::{
        GetCurrentProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
    };
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: the handle is checked, used once, and closed (the current
    // process's pseudo-handle needs no closing); the times are written into
    // the four locals.
    unsafe {
        let h = match pid {
            None => GetCurrentProcess(),
            Some(pid) => OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid),
        };
        if h.is_null() {
            return None;
        }
        let ok = GetProcessTimes(h, &mut created, &mut exited, &mut kernel, &mut user) != 0;
        if pid.is_some() {
            CloseHandle(h);
        }
        ok.then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }
}

/// Running child processes of this process.
///
/// Windows keeps a process's parent id after the parent is gone and reuses
/// ids (Wine early and often), so a process that names this one's id as its
/// parent may be older than this process, the child of a dead one: those are
/// left out.
#[cfg(windows)]
pub fn child_pids() -> Vec<u32> {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, Process32First, Process32Next, PROCESSENTRY32, TH32CS_SNAPPROCESS,
    };
    let me = std::process::id();
    let mut live = vec![];
    // SAFETY: the snapshot handle is checked and closed; `entry` is sized as
    // the API requires before the first call.
    unsafe {
        let snap = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
        assert!(
            !snap.is_null() && snap as isize != -1,
            "no process snapshot"
        );
        let mut entry: PROCESSENTRY32 = std::mem::zeroed();
        entry.dwSize = std::mem::size_of::<PROCESSENTRY32>() as u32;
        let mut more = Process32First(snap, &mut entry) != 0;
        while more {
            let pid = entry.th32ProcessID;
            let younger = created_at(Some(pid)) >= created_at(None);
            if entry.th32ParentProcessID == me && younger && is_running(pid) {
                live.push(pid);
            }
            more = Process32Next(snap, &mut entry) != 0;
        }
        CloseHandle(snap);
    }
    live
}

/// True when `pid` is gone. (Windows has no zombies to reap: an exited
/// process is gone for our purposes, and its pid is not reused while the
/// pool holds its handle.)
#[cfg(windows)]
pub fn is_reaped(pid: u32) -> bool {
    !is_running(pid)
}

#[cfg(unix)]
/// The process state letter from /proc/PID/stat, or None if it does not exist.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ..." — comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

#[cfg(unix)]
/// Parent pid of `pid`, if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(unix)]
/// True while `pid` is a running (not zombie) process.
pub fn is_running(pid: u32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

#[cfg(unix)]
/// True when `pid` is gone entirely: neither running nor a zombie child of
/// ours (so it was reaped).
pub fn is_reaped(pid: u32) -> bool {
    match proc_state(pid) {
        None => true,
        // The pid may have been reused by an unrelated process.
        Some(_) => parent_of(pid) != Some(std::process::id()),
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "procpool-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs named tests one after another in this process (for `harness = false`
/// test binaries, whose checks need the process to themselves), prints a
/// libtest-style summary, and exits non-zero if any failed.
pub fn run_sequentially(tests: &[(&str, &dyn Fn())]) {
    let mut failed = 0;
    for (name, test) in tests {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {} passed; {failed} failed",
        tests.len() - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}

/// The number of descriptors (Windows: handles) this process has open.
#[cfg(unix)]
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[cfg(windows)]
pub fn open_fds() -> usize {
    handle_count()
}

/// (running, zombie) children of this process.
#[cfg(unix)]
pub fn children() -> (Vec<u32>, Vec<u32>) {
    let me = std::process::id();
    let (mut live, mut zombies) = (vec![], vec![]);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if parent_of(pid) == Some(me) {
            match proc_state(pid) {
                Some('Z') => zombies.push(pid),
                Some(_) => live.push(pid),
                None => {}
            }
        }
    }
    (live, zombies)
}

/// (running, zombie) children of this process; Windows has no zombies.
#[cfg(windows)]
pub fn children() -> (Vec<u32>, Vec<u32>) {
    (child_pids(), vec![])
}
