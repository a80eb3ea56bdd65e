//! [`ProcessPool`]: run functions in worker processes.

mod builder;
mod ctx;
mod direct;
mod ending;
mod init;
mod job;
mod lane;
pub(crate) mod launcher;
mod lend;
mod outbox;
mod pool;
mod serve;
mod slot;
mod start;
mod worker;

pub use builder::ProcessPoolBuilder;
pub use pool::ProcessPool;
