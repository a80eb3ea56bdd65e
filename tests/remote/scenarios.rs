//! The scenarios of `tests/remote.rs` (Unix only).

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{is_running, parent_of, temp_dir, wait_until};
use procpool::{Error, ProcessPool, Remote, TaskError};

const HOST: &str = "procpool-test";

fn square(x: u64) -> u64 {
    x * x
}
fn pid(_: ()) -> u32 {
    std::process::id()
}
fn panics(_: ()) -> u32 {
    panic!("deliberate far panic")
}
fn aborts(_: ()) -> u32 {
    std::process::abort()
}
fn exits_3(_: ()) -> u32 {
    std::process::exit(3)
}
fn sleep_ms(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}
fn announce_and_sleep(path: PathBuf) -> u32 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(120));
    std::process::id()
}
/// Prints a lot on stdout and stderr, including bytes shaped like frames.
fn chatty(n: u64) -> u64 {
    for i in 0..50 {
        println!("task output line {i} of {n}");
        let mut out = std::io::stdout();
        let _ = out.write_all(&[0, 0, 0, 9, 0xff, 0x01, 0x02, b'\n']);
        eprintln!("task error line {i}");
    }
    let _ = std::io::stdout().flush();
    n * 2
}

// ---------------------------------------------------------------------------
// The server.

struct Sshd {
    config: PathBuf,
    /// Started here, so stopped here.
    ours: bool,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn sshd() -> Option<&'static Sshd> {
    static SSHD: OnceLock<Option<Sshd>> = OnceLock::new();
    SSHD.get_or_init(|| {
        if let Some(config) = std::env::var_os("PROCPOOL_TEST_SSH_CONFIG") {
            return Some(Sshd {
                config: config.into(),
                ours: false,
            });
        }
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        if !Path::new("/usr/sbin/sshd").exists() {
            assert!(
                !ci,
                "CI=true but /usr/sbin/sshd is missing: the remote tests must run"
            );
            return None;
        }
        let out = Command::new(script("test-sshd.sh"))
            .arg("start")
            .env("PROCPOOL_SSHD_DIR", temp_dir("sshd"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/test-sshd.sh");
        assert!(out.status.success(), "scripts/test-sshd.sh start failed");
        let config = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Some(Sshd {
            config: config.into(),
            ours: true,
        })
    })
    .as_ref()
}

fn config() -> &'static Path {
    &sshd().expect("sshd").config
}

fn ssh(workers: usize) -> Remote {
    Remote::ssh(HOST).arg("-F").arg(config()).workers(workers)
}

/// Runs `command` on the test host, returns its stdout.
fn far(command: &str) -> String {
    let out = Command::new("ssh")
        .arg("-F")
        .arg(config())
        .arg(HOST)
        .arg(command)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Our own ssh client children.
fn our_ssh_clients() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(me))
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "ssh")
        })
        .collect()
}

fn far_pid_of(pool: &ProcessPool, host: &str) -> Vec<u32> {
    pool.workers_info()
        .into_iter()
        .filter(|w| w.host.as_deref() == Some(host))
        .map(|w| w.pid)
        .collect()
}

fn wait_for_pid_file(path: &Path) -> u32 {
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(path)
            .is_ok_and(|s| !s.is_empty())),
        "the task did not start"
    );
    std::fs::read_to_string(path).unwrap().parse().unwrap()
}

/// The far copy of this executable.
fn shipped_path() -> PathBuf {
    let name = std::env::current_exe().unwrap();
    let name = name.file_name().unwrap().to_str().unwrap().to_string();
    let dir = Path::new(&far("echo $HOME")).join(".cache/procpool");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let f = p.file_name().unwrap().to_str().unwrap();
            f.starts_with(&format!("{name}-")) && !f.contains(".tmp.")
        })
        .collect();
    assert_eq!(found.len(), 1, "one shipped copy: {found:?}");
    found.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------
// 1. Shipping.

fn shipped_once_reused_and_verified() {
    // A clean slate: the first pool must ship.
    let dir = Path::new(&far("echo $HOME")).join(".cache/procpool");
    let me = std::env::current_exe().unwrap();
    let prefix = format!("{}-", me.file_name().unwrap().to_str().unwrap());
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if e.file_name().to_str().unwrap().starts_with(&prefix) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let pool = ProcessPool::builder().remote(ssh(2)).build().unwrap();
    let path = shipped_path();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let hash = &name[prefix.len()..];
    assert!(
        hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "content hash in the name: {name}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&me).unwrap());
    assert_eq!(block_on(pool.apply(square, 12)), Ok(144));
    // The workers run the shipped copy.
    let far_pid = far_pid_of(&pool, HOST)[0];
    let exe = std::fs::read_link(format!("/proc/{far_pid}/exe")).unwrap();
    assert_eq!(exe, path);
    drop(pool);

    // A later pool reuses it: same file, not rewritten.
    use std::os::unix::fs::MetadataExt;
    let before = std::fs::metadata(&path).unwrap();
    let pool = ProcessPool::builder().remote(ssh(1)).build().unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()));
    assert_eq!(block_on(pool.apply(square, 3)), Ok(9));
    block_on(pool.shutdown());

    // A damaged copy fails verification and is replaced before use. (The far
    // worker may still be exiting after its ssh session closed: the file
    // is busy until it has.)
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = std::fs::write(&path, &bytes) {
        let busy = e.kind() == std::io::ErrorKind::ExecutableFileBusy;
        assert!(busy && Instant::now() < deadline, "damaging the copy: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pool = ProcessPool::builder().remote(ssh(1)).build().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&me).unwrap());
    assert_eq!(block_on(pool.apply(square, 4)), Ok(16));
}

/// A copy of this executable with its ELF machine field changed: what a host
/// of another architecture would make of the real one.
fn foreign_arch_copy() -> PathBuf {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    // e_machine (offset 18, 2 bytes): x86-64 (62) <-> AArch64 (183).
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let other: u16 = if machine == 62 { 183 } else { 62 };
    bytes[18..20].copy_from_slice(&other.to_le_bytes());
    let path = temp_dir("arch").join("foreign");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn a_host_that_cannot_run_it_is_a_clear_error() {
    let started = Instant::now();
    let remote = ssh(2).ship_file_for_testing(foreign_arch_copy());
    match ProcessPool::builder().remote(remote).build() {
        Err(Error::Remote { host, message }) => {
            assert_eq!(host, HOST);
            assert!(message.contains("architecture"), "{message}");
            assert!(message.contains("126"), "{message}");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
    // A mixed pool fails as a whole, naming the host; nothing is left behind.
    let remote = ssh(1).ship_file_for_testing(foreign_arch_copy());
    let err = ProcessPool::builder()
        .workers(1)
        .remote(remote)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains(HOST), "{err}");
    assert!(wait_until(Duration::from_secs(5), || our_ssh_clients().is_empty()));
}

fn an_unreachable_host_is_a_clear_error() {
    let started = Instant::now();
    // Nothing listens on port 1 of 127.0.0.1 (the command line's Port wins
    // over the config's).
    let remote = ssh(1).arg("-o").arg("Port=1");
    match ProcessPool::builder().remote(remote).build() {
        Err(Error::Remote { host, message }) => {
            assert_eq!(host, HOST);
            assert!(message.contains("255"), "{message}");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
}

/// Shell metacharacters in the destination reach ssh as one argument and
/// no shell: nothing they spell is run, here or there.
fn a_destination_with_shell_metacharacters_runs_nothing() {
    let dir = temp_dir("meta");
    let canary = dir.join("canary");
    // A config under which any destination name reaches the test server.
    let star = dir.join("ssh_config");
    let text = std::fs::read_to_string(config()).unwrap();
    std::fs::write(&star, text.replace("Host procpool-test", "Host *")).unwrap();
    let host = format!(
        "x;touch {0} `touch {0}` $(touch {0}) '\"|&",
        canary.display()
    );
    let remote = Remote::ssh(host.as_str()).arg("-F").arg(&star);
    match ProcessPool::builder().remote(remote).build() {
        // The name is only a name: with the config's HostName, it connects.
        Ok(pool) => {
            assert_eq!(block_on(pool.apply(square, 5)), Ok(25));
            assert_eq!(pool.workers_info()[0].host.as_deref(), Some(host.as_str()));
        }
        // Or ssh refuses such a name: a clean error naming it.
        Err(Error::Remote { host: named, .. }) => assert_eq!(named, host),
        Err(e) => panic!("unexpected: {e}"),
    }
    assert!(!canary.exists(), "a shell ran part of the host name");
}

// ---------------------------------------------------------------------------
// 2. Prints on the far side.

/// A child process of this binary runs 100 chatty tasks on one far worker
/// (in a child, so that its stderr can be read here).
fn chatty_run() -> &'static std::process::Output {
    static OUT: OnceLock<std::process::Output> = OnceLock::new();
    OUT.get_or_init(|| {
        Command::new(std::env::current_exe().unwrap())
            .arg("--role=chatty")
            .env("PROCPOOL_TEST_SSH_CONFIG", config())
            .output()
            .unwrap()
    })
}

fn role_chatty() {
    let pool = ProcessPool::builder().remote(ssh(1)).build().unwrap();
    let tasks: Vec<_> = (0..100).map(|i| pool.spawn(chatty, i)).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(block_on(t), Ok(i as u64 * 2));
    }
    let r = pool.stats().restarts;
    block_on(pool.shutdown());
    println!("results ok, {} workers lost", r.crashed + r.protocol);
}

fn far_prints_do_not_corrupt_frames() {
    let out = chatty_run();
    assert!(out.status.success(), "{out:?}");
    // Nothing of the tasks' stdout reached the parent's stdout either.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "results ok, 0 workers lost"
    );
}

/// The prints reach the parent's stderr (through ssh), never its stdout.
fn far_prints_go_to_the_parents_stderr() {
    let stderr = String::from_utf8_lossy(&chatty_run().stderr);
    assert!(stderr.contains("task output line 49 of 99"), "{stderr}");
    assert!(stderr.contains("task error line 49"), "{stderr}");
}

// ---------------------------------------------------------------------------
// 3. Kill-on-drop.

fn dropping_a_running_remote_task_ends_the_far_process() {
    let pool = ProcessPool::builder().remote(ssh(1)).build().unwrap();
    let first = block_on(pool.apply(pid, ())).unwrap();
    assert_eq!(far_pid_of(&pool, HOST), vec![first]);
    assert!(pool.worker_pids().is_empty(), "far pids are not local ones");
    let file = temp_dir("drop").join("pid");
    let task = pool.spawn(announce_and_sleep, file.clone());
    let far_pid = wait_for_pid_file(&file);
    assert_eq!(far_pid, first);
    let dropped = Instant::now();
    drop(task);
    // On loopback the far /proc is ours to watch…
    assert!(
        wait_until(Duration::from_secs(2), || !is_running(far_pid)),
        "far worker {far_pid} still alive 2 s after the drop"
    );
    let gone = dropped.elapsed();
    // …and a second ssh, as for a real remote host, agrees.
    assert_eq!(far(&format!("test -e /proc/{far_pid} && echo alive")), "");
    let next = block_on(pool.apply(pid, ())).unwrap();
    let replaced = dropped.elapsed();
    assert_ne!(next, far_pid, "a replacement serves the next task");
    println!("  far process gone after {gone:?}; replacement answered after {replaced:?}");
}

// ---------------------------------------------------------------------------
// 4. Crashes and broken connections.

fn far_crashes_give_typed_errors_with_host_and_pid() {
    let pool = ProcessPool::builder().remote(ssh(1)).build().unwrap();
    let far_pid = block_on(pool.apply(pid, ())).unwrap();
    match block_on(pool.apply(panics, ())) {
        Err(TaskError::Panicked { message, pid, .. }) => {
            assert!(message.contains("deliberate far panic"));
            assert_eq!(pid, Some(far_pid)); // the worker survives a panic
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(block_on(pool.apply(pid, ())), Ok(far_pid));
    match block_on(pool.apply(aborts, ())) {
        Err(e @ TaskError::RemoteWorkerDied { .. }) => {
            assert_eq!(
                e,
                TaskError::RemoteWorkerDied {
                    host: HOST.into(),
                    pid: far_pid,
                    code: None,
                    signal: Some(libc::SIGABRT),
                }
            );
            assert!(e.to_string().contains(HOST), "{e}");
        }
        other => panic!("unexpected: {other:?}"),
    }
    let second = block_on(pool.apply(pid, ())).unwrap();
    assert_ne!(second, far_pid);
    match block_on(pool.apply(exits_3, ())) {
        Err(TaskError::RemoteWorkerDied {
            host,
            pid,
            code: Some(3),
            signal: None,
        }) => assert_eq!((host.as_str(), pid), (HOST, second)),
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(block_on(pool.apply(square, 7)), Ok(49));
}

fn a_killed_ssh_client_fails_only_its_worker_tasks() {
    let pool = ProcessPool::builder().remote(ssh(2)).build().unwrap();
    let dir = temp_dir("sshkill");
    let doomed = pool.spawn(announce_and_sleep, dir.join("a"));
    let doomed_pid = wait_for_pid_file(&dir.join("a"));
    // The other worker runs a task that must finish unharmed.
    let fine = pool.spawn(sleep_ms, 1500);
    let clients = our_ssh_clients();
    assert_eq!(clients.len(), 2, "{clients:?}");
    // The doomed worker's client, found through its TCP connection.
    let client = which_client_serves(&clients, doomed_pid);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(client as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    match block_on(doomed) {
        Err(TaskError::Disconnected { host }) => assert_eq!(host, HOST),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(5), || !is_running(doomed_pid)),
        "far worker outlived its connection"
    );
    assert!(block_on(fine).is_ok(), "the other worker's task failed");
    let results: Vec<_> = (0..20).map(|i| pool.spawn(square, i)).collect();
    for (i, t) in results.into_iter().enumerate() {
        assert_eq!(block_on(t), Ok((i * i) as u64));
    }
    assert_eq!(pool.workers_info().len(), 2, "restarted");
}

/// The ssh client (a child of ours) whose connection leads to far worker
/// `far_pid`: the client's local TCP port is the peer port of the far
/// session's socket. On loopback both ends are visible in /proc/net/tcp.
fn which_client_serves(clients: &[u32], far_pid: u32) -> u32 {
    let session = parent_of(parent_of(far_pid).unwrap()).unwrap();
    let inodes = |p: u32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter_map(|l| {
                let l = l.to_str()?.to_string();
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect()
    };
    // local address -> inode, and inode -> (local, remote)
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let rows: Vec<(String, String, String)> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f[1].to_string(), f[2].to_string(), f.get(9)?.to_string()))
        })
        .collect();
    // sshd's session may hold the socket in its privilege-separated parent:
    // look at the session and its parent.
    let mut far_ends = inodes(session);
    if let Some(pp) = parent_of(session) {
        far_ends.extend(inodes(pp));
    }
    let peers: Vec<&String> = rows
        .iter()
        .filter(|(_, _, ino)| far_ends.contains(ino))
        .map(|(_, remote, _)| remote)
        .collect();
    for &c in clients {
        let mine = inodes(c);
        if rows
            .iter()
            .any(|(local, _, ino)| mine.contains(ino) && peers.contains(&local))
        {
            return c;
        }
    }
    panic!("no ssh client found for far worker {far_pid}");
}

fn a_dropped_connection_fails_only_its_worker_tasks() {
    let pool = ProcessPool::builder().remote(ssh(2)).build().unwrap();
    let dir = temp_dir("drop-conn");
    let doomed = pool.spawn(announce_and_sleep, dir.join("a"));
    let doomed_pid = wait_for_pid_file(&dir.join("a"));
    let fine = pool.spawn(sleep_ms, 1500);
    // Cut the connection on the server side: kill the far sshd session.
    let session = parent_of(parent_of(doomed_pid).unwrap()).unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{session}/comm")).unwrap();
    assert_eq!(comm.trim(), "sshd", "the far worker runs under sshd");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(session as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    match block_on(doomed) {
        Err(TaskError::Disconnected { host }) => assert_eq!(host, HOST),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(5), || !is_running(doomed_pid)),
        "far worker outlived its connection"
    );
    assert!(block_on(fine).is_ok(), "the other worker's task failed");
    assert_eq!(block_on(pool.apply(square, 9)), Ok(81));
}

/// A host that stops accepting connections: the worker's tasks fail with a
/// typed error naming the host (the crash-loop breaker), never a hang, and
/// the pool keeps retrying with a growing pause.
fn a_host_that_goes_away_fails_tasks_with_its_name() {
    // A second server of our own, so that stopping it harms no other test.
    let dir = temp_dir("second-sshd");
    let out = Command::new(script("test-sshd.sh"))
        .arg("start")
        .env("PROCPOOL_SSHD_DIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "second sshd: {out:?}");
    let second = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let remote = Remote::ssh(HOST).arg("-F").arg(&second).name("second");
    let pool = ProcessPool::builder().remote(remote).build().unwrap();
    let file = dir.join("pid");
    let doomed = pool.spawn(announce_and_sleep, file.clone());
    let far_pid = wait_for_pid_file(&file);
    // Stop the server's listener (new connections are refused; its config
    // and keys stay), then cut the live connection.
    let listener: i32 = std::fs::read_to_string(dir.join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let listener = rustix::process::Pid::from_raw(listener).unwrap();
    rustix::process::kill_process(listener, rustix::process::Signal::TERM).unwrap();
    let session = parent_of(parent_of(far_pid).unwrap()).unwrap();
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(session as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
    match block_on(doomed) {
        Err(TaskError::Disconnected { host }) => assert_eq!(host, "second"),
        other => panic!("unexpected: {other:?}"),
    }
    let started = Instant::now();
    match block_on(pool.apply(square, 2)) {
        Err(TaskError::WorkerStart(why)) => assert!(why.contains("second"), "{why}"),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(60), "no hang");
    assert!(pool.stats().restarts.start_failed >= 1);
    pool.terminate();
    let _ = Command::new(script("test-sshd.sh"))
        .arg("stop")
        .env("PROCPOOL_SSHD_DIR", &dir)
        .status();
}

// ---------------------------------------------------------------------------
// 5. The parent SIGKILLed.

fn role_holder() {
    let pool = ProcessPool::builder().remote(ssh(2)).build().unwrap();
    let dir = PathBuf::from(std::env::args().nth(2).unwrap());
    let tasks: Vec<_> = (0..2)
        .map(|i| pool.spawn(announce_and_sleep, dir.join(i.to_string())))
        .collect();
    let pids: Vec<u32> = (0..2)
        .map(|i| wait_for_pid_file(&dir.join(i.to_string())))
        .collect();
    println!("pids {} {}", pids[0], pids[1]);
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(300));
    drop(tasks);
}

fn a_sigkilled_parent_leaves_no_far_worker() {
    let dir = temp_dir("holder");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--role=holder")
        .arg(&dir)
        .env("PROCPOOL_TEST_SSH_CONFIG", config())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    assert!(pids.iter().all(|&p| is_running(p)));
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || pids
            .iter()
            .all(|&p| !is_running(p))),
        "far workers {pids:?} outlived their parent"
    );
    println!("  far workers gone {:?} after the parent", killed.elapsed());
}

// ---------------------------------------------------------------------------
// 6. Mixed pools.

fn a_mixed_pool_maps_in_order() {
    let pool = ProcessPool::builder()
        .workers(1)
        .remote(ssh(2))
        .build()
        .unwrap();
    let info = pool.workers_info();
    assert_eq!(info.len(), 3);
    assert_eq!(info.iter().filter(|w| w.host.is_none()).count(), 1);
    assert_eq!(
        info.iter()
            .filter(|w| w.host.as_deref() == Some(HOST))
            .count(),
        2
    );
    assert_eq!(pool.worker_pids().len(), 1);
    let out: Vec<u64> = pool
        .map_blocking(square, 0..5000u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
    // Every worker took part: slow items spread over all three.
    let pids: std::collections::HashSet<u32> = pool
        .map_blocking(sleep_ms, vec![30u64; 30])
        .map(Result::unwrap)
        .collect();
    assert_eq!(pids.len(), 3, "{pids:?}");
    // The round trip, measured (printed, not asserted).
    let t = Instant::now();
    for _ in 0..50 {
        block_on(pool.apply(square, 1)).unwrap();
    }
    println!(
        "  mixed-pool apply {:?} each; slowest worker round trip {:?}",
        t.elapsed() / 50,
        pool.stats().round_trip
    );
    assert!(pool.stats().round_trip > Duration::ZERO, "measured");
}

// ---------------------------------------------------------------------------
// 7. Build identity.

fn another_build_on_the_far_side_is_refused() {
    // Another build: the same program with one byte more (still runs, but its
    // content hash differs).
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.push(0);
    let other = temp_dir("build").join("other");
    std::fs::write(&other, bytes).unwrap();
    match ProcessPool::builder()
        .remote(ssh(1).ship_file_for_testing(other))
        .build()
    {
        Err(Error::Remote { host, message }) => {
            assert_eq!(host, HOST);
            assert!(message.contains("different build"), "{message}");
        }
        other => panic!("unexpected: {other:?}"),
    }
}

/// A far worker checks the content hash too, whoever started it: through a
/// command launcher pointed at another build, the handshake refuses.
fn a_command_launcher_checks_the_build_too() {
    let mut bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    bytes.push(0);
    let other = temp_dir("build2").join("other");
    std::fs::write(&other, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    let remote = Remote::command([script("fake-srun"), "-N1".into(), "--".into()])
        .name("node1")
        .executable(&other);
    match ProcessPool::builder().remote(remote).build() {
        Err(Error::BuildMismatch { message, .. }) => {
            assert!(message.contains("node1"), "{message}");
            assert!(message.contains("different build"), "{message}");
        }
        other => panic!("unexpected: {other:?}"),
    }
}

fn allocates_1_gib(_: ()) -> usize {
    let v = vec![1u8; 1 << 30];
    std::hint::black_box(&v).len()
}

/// The memory limit reaches the far side: an allocation beyond it kills that
/// worker only, with a typed error.
fn the_memory_limit_applies_to_remote_workers() {
    let pool = ProcessPool::builder()
        .memory_limit_per_worker(256 << 20)
        .remote(ssh(1))
        .build()
        .unwrap();
    match block_on(pool.apply(allocates_1_gib, ())) {
        Err(TaskError::RemoteWorkerDied { host, signal, .. }) => {
            assert_eq!(host, HOST);
            assert_eq!(signal, Some(libc::SIGABRT), "out of memory aborts");
        }
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(block_on(pool.apply(square, 6)), Ok(36));
}

/// Through a real single-node Slurm, when one is up (`scripts/test-slurm.sh
/// start` prints the `SLURM_CONF` to export as `PROCPOOL_TEST_SLURM_CONF`).
/// `-u` (unbuffered): srun line-buffers task output by default, which would
/// hold a frame back until a newline byte happens to follow.
fn a_real_srun_runs_workers() {
    let Some(conf) = std::env::var_os("PROCPOOL_TEST_SLURM_CONF") else {
        println!("  skipped: no Slurm (PROCPOOL_TEST_SLURM_CONF unset)");
        return;
    };
    // Read by every srun the pool starts (they inherit the environment).
    std::env::set_var("SLURM_CONF", conf);
    let remote = Remote::command(["srun", "-u", "-N1", "-n1", "--"]).workers(2);
    let pool = ProcessPool::builder().remote(remote).build().unwrap();
    let out: Vec<u64> = pool
        .map_blocking(square, 0..2000u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..2000u64).map(|x| x * x).collect::<Vec<_>>());
    let file = temp_dir("slurm").join("pid");
    let task = pool.spawn(announce_and_sleep, file.clone());
    let far_pid = wait_for_pid_file(&file);
    drop(task);
    assert!(
        wait_until(Duration::from_secs(5), || !is_running(far_pid)),
        "the job step's worker outlived the drop"
    );
    match block_on(pool.apply(exits_3, ())) {
        Err(TaskError::RemoteWorkerDied {
            host,
            code: Some(3),
            ..
        }) => assert_eq!(host, "srun"),
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(block_on(pool.apply(square, 8)), Ok(64));
}

/// What cannot be honoured for remote workers is refused, not ignored.
fn max_memory_is_refused_for_remote_workers() {
    // (Earlier pools' clients go away in the background.)
    assert!(wait_until(Duration::from_secs(10), || our_ssh_clients().is_empty()));
    let built = ProcessPool::builder()
        .workers(1)
        .max_memory_per_worker(1 << 30)
        .remote(ssh(1))
        .build();
    match built {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::Unsupported),
        other => panic!("unexpected: {other:?}"),
    }
    assert!(our_ssh_clients().is_empty(), "refused before any ssh");
}

// ---------------------------------------------------------------------------
// Slurm-style launchers.

fn a_command_launcher_runs_workers() {
    let remote =
        Remote::command([script("fake-srun"), "-N1".into(), "-n1".into(), "--".into()]).workers(2);
    let pool = ProcessPool::builder()
        .workers(1)
        .remote(remote)
        .build()
        .unwrap();
    let hosts: Vec<_> = pool.workers_info().into_iter().map(|w| w.host).collect();
    assert_eq!(
        hosts
            .iter()
            .filter(|h| h.as_deref() == Some("fake-srun"))
            .count(),
        2
    );
    let out: Vec<u64> = pool
        .map_blocking(square, 0..1000u64)
        .map(Result::unwrap)
        .collect();
    assert_eq!(out, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    // Kill-on-drop and crash errors through it.
    let file = temp_dir("srun").join("pid");
    let task = pool.spawn(announce_and_sleep, file.clone());
    let far_pid = wait_for_pid_file(&file);
    drop(task);
    assert!(wait_until(Duration::from_secs(2), || !is_running(far_pid)));
    let mut died = 0;
    for _ in 0..3 {
        match block_on(pool.apply(exits_3, ())) {
            Err(TaskError::RemoteWorkerDied {
                host,
                code: Some(3),
                ..
            }) => {
                assert_eq!(host, "fake-srun");
                died += 1;
            }
            Err(TaskError::WorkerDied { code: Some(3), .. }) => {} // the local worker
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert!(died > 0 || pool.workers() == 3);
    assert_eq!(block_on(pool.apply(square, 8)), Ok(64));
}

// ---------------------------------------------------------------------------

pub fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--role=holder") => return role_holder(),
        Some("--role=chatty") => return role_chatty(),
        _ => {}
    }
    if sshd().is_none() {
        println!("remote tests skipped: no /usr/sbin/sshd (install openssh-server)");
        println!("\ntest result: ok. 0 passed; 0 failed");
        return;
    }
    let tests: &[(&str, &dyn Fn())] = &[
        (
            "shipped_once_reused_and_verified",
            &shipped_once_reused_and_verified,
        ),
        (
            "a_host_that_cannot_run_it_is_a_clear_error",
            &a_host_that_cannot_run_it_is_a_clear_error,
        ),
        (
            "an_unreachable_host_is_a_clear_error",
            &an_unreachable_host_is_a_clear_error,
        ),
        (
            "a_destination_with_shell_metacharacters_runs_nothing",
            &a_destination_with_shell_metacharacters_runs_nothing,
        ),
        (
            "far_prints_do_not_corrupt_frames",
            &far_prints_do_not_corrupt_frames,
        ),
        (
            "far_prints_go_to_the_parents_stderr",
            &far_prints_go_to_the_parents_stderr,
        ),
        (
            "dropping_a_running_remote_task_ends_the_far_process",
            &dropping_a_running_remote_task_ends_the_far_process,
        ),
        (
            "far_crashes_give_typed_errors_with_host_and_pid",
            &far_crashes_give_typed_errors_with_host_and_pid,
        ),
        (
            "a_killed_ssh_client_fails_only_its_worker_tasks",
            &a_killed_ssh_client_fails_only_its_worker_tasks,
        ),
        (
            "a_dropped_connection_fails_only_its_worker_tasks",
            &a_dropped_connection_fails_only_its_worker_tasks,
        ),
        (
            "a_host_that_goes_away_fails_tasks_with_its_name",
            &a_host_that_goes_away_fails_tasks_with_its_name,
        ),
        (
            "a_sigkilled_parent_leaves_no_far_worker",
            &a_sigkilled_parent_leaves_no_far_worker,
        ),
        ("a_mixed_pool_maps_in_order", &a_mixed_pool_maps_in_order),
        (
            "another_build_on_the_far_side_is_refused",
            &another_build_on_the_far_side_is_refused,
        ),
        (
            "a_command_launcher_checks_the_build_too",
            &a_command_launcher_checks_the_build_too,
        ),
        (
            "a_command_launcher_runs_workers",
            &a_command_launcher_runs_workers,
        ),
        (
            "the_memory_limit_applies_to_remote_workers",
            &the_memory_limit_applies_to_remote_workers,
        ),
        ("a_real_srun_runs_workers", &a_real_srun_runs_workers),
        (
            "max_memory_is_refused_for_remote_workers",
            &max_memory_is_refused_for_remote_workers,
        ),
    ];
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
    if sshd().is_some_and(|s| s.ours) {
        let dir = config().parent().unwrap();
        let _ = Command::new(script("test-sshd.sh"))
            .arg("stop")
            .env("PROCPOOL_SSHD_DIR", dir)
            .status();
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
