//! [`ProcessPool`]: run functions in worker processes.

mod builder;
mod init;
mod job;
mod lane;
pub(crate) mod launcher;
mod outbox;
mod pool;
mod start;
mod supervisor;

pub use builder::ProcessPoolBuilder;
pub use pool::ProcessPool;
