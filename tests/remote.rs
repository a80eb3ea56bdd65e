//! Workers on another machine (issue 11), against a real OpenSSH server on
//! 127.0.0.1 started by `scripts/test-sshd.sh`, and through a stand-in for
//! Slurm's `srun` (`scripts/fake-srun`).
//!
//! The server comes from `PROCPOOL_TEST_SSH_CONFIG` (an ssh client config
//! with a `procpool-test` host, as the script prints), else this binary
//! starts one with the script and stops it at the end. Without sshd the tests
//! fail under `CI=true` and are skipped (saying so) elsewhere. One more test
//! runs workers through a real `srun` when `PROCPOOL_TEST_SLURM_CONF` names
//! the config of a single-node Slurm (`scripts/test-slurm.sh start`, which
//! `.ci/run` does).
//!
//! `harness = false`: the scenarios run one after another in one process, so
//! counts of our own ssh clients are exact, and `--role=holder` re-executes
//! this binary as a parent to be SIGKILLed.
//!
//! Unix only for now: remote workers need the ssh launcher and the worker's
//! stdio mode, which are not built for Windows; there `main` says so.

#[cfg(unix)]
#[path = "remote/scenarios.rs"]
mod scenarios;

#[cfg(unix)]
fn main() {
    scenarios::main()
}

#[cfg(not(unix))]
fn main() {
    println!("remote workers are Unix only for now: nothing to run on this platform");
}
