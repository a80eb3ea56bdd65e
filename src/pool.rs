//! [`Pool`]: code that runs on either kind of pool.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{ProcessPool, Task, TaskError, ThreadPool};

/// What [`ProcessPool`] and [`ThreadPool`] have in common, for code generic
/// over the kind of pool. The bounds are the process pool's (serde), the
/// stricter of the two.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procpool::Pool;
///
/// fn cube(x: i64) -> i64 { x * x * x }
///
/// async fn sum_of_cubes(pool: &impl Pool, n: i64) -> Result<i64, procpool::TaskError> {
///     let tasks: Vec<_> = (1..=n).map(|i| pool.spawn(cube, i)).collect();
///     let mut total = 0;
///     for t in tasks { total += t.await?; }
///     Ok(total)
/// }
///
/// assert_eq!(sum_of_cubes(&procpool::ThreadPool::new(2)?, 3).await?, 36);
/// assert_eq!(sum_of_cubes(&procpool::ProcessPool::new(2)?, 3).await?, 36);
/// # Ok(()) }
/// ```
pub trait Pool: Clone + Send + Sync + 'static {
    /// Runs `f(args)` in the pool; see [`ProcessPool::spawn`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use procpool::{Pool, Task};
    ///
    /// fn double(x: u32) -> u32 { 2 * x }
    ///
    /// fn double_all(pool: &impl Pool, xs: &[u32]) -> Vec<Task<u32>> {
    ///     xs.iter().map(|&x| pool.spawn(double, x)).collect()
    /// }
    ///
    /// let pool = procpool::ThreadPool::new(2)?;
    /// let doubled = futures::future::try_join_all(double_all(&pool, &[1, 2, 3])).await?;
    /// assert_eq!(doubled, [2, 4, 6]);
    /// # Ok(()) }
    /// ```
    fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static;

    /// Runs `f(args)` and blocks until it finishes; see
    /// [`ProcessPool::apply_blocking`].
    ///
    /// ```
    /// use procpool::Pool;
    ///
    /// fn checksum(data: Vec<u8>) -> u32 { data.iter().map(|&b| u32::from(b)).sum() }
    ///
    /// fn checksum_on(pool: &impl Pool, data: Vec<u8>) -> u32 {
    ///     pool.apply_blocking(checksum, data).expect("checksum task")
    /// }
    ///
    /// assert_eq!(checksum_on(&procpool::ThreadPool::new(1)?, vec![1, 2, 3]), 6);
    /// assert_eq!(checksum_on(&procpool::ProcessPool::new(1)?, vec![1, 2, 3]), 6);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    fn apply_blocking<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, TaskError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        crate::block_on::block_on(Pool::spawn(self, f, args))
    }

    /// Number of workers (processes or threads).
    ///
    /// ```
    /// use procpool::Pool;
    ///
    /// /// Items per worker when `items` are spread evenly over the pool.
    /// fn share(pool: &impl Pool, items: usize) -> usize { items.div_ceil(pool.workers()) }
    ///
    /// assert_eq!(share(&procpool::ThreadPool::new(3)?, 10), 4);
    /// assert_eq!(share(&procpool::ProcessPool::new(2)?, 10), 5);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    fn workers(&self) -> usize;
}

impl Pool for ProcessPool {
    fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ProcessPool::spawn(self, f, args)
    }

    fn workers(&self) -> usize {
        ProcessPool::workers(self)
    }
}

impl Pool for ThreadPool {
    fn spawn<A, R>(&self, f: fn(A) -> R, args: A) -> Task<R>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        ThreadPool::spawn(self, f, args)
    }

    fn workers(&self) -> usize {
        ThreadPool::workers(self)
    }
}
