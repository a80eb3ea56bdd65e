//! Running a chunk of map items as one task, and how the two pools start one.

use std::collections::VecDeque;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::values::{ValueIter, Values};
use crate::func_ref::{self, FnRef};
use crate::{panic_info, ProcessPool, Task, TaskError, ThreadPool};

/// What a chunk sends back: the values of the items that returned, in order,
/// and the panics of those that did not.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "", deserialize = "R: DeserializeOwned"))]
pub(crate) struct ChunkOutput<R> {
    pub(crate) values: Values<R>,
    pub(crate) panics: Vec<ItemPanic>,
    /// Time spent running the items, in nanoseconds: feeds the chunk sizer.
    pub(crate) nanos: u64,
    /// Pid of the worker process; 0 on a thread pool.
    pub(crate) pid: u32,
}

/// One item's panic, by its position in the chunk.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ItemPanic {
    pub(crate) index: u32,
    pub(crate) message: String,
    pub(crate) location: Option<String>,
}

/// A run of consecutive results, yielded without copying them into
/// per-item `Result`s first.
pub(crate) enum Segment<R> {
    /// A chunk's output: values in order, with panics at their positions.
    Output {
        values: ValueIter<R>,
        panics: std::vec::IntoIter<ItemPanic>,
        next_panic: Option<ItemPanic>,
        index: u32,
        pid: Option<u32>,
    },
    /// `remaining` items that all failed with `error`.
    Failed { error: TaskError, remaining: usize },
}

impl<R> Segment<R> {
    pub(crate) fn output(output: ChunkOutput<R>) -> Self {
        let mut panics = output.panics.into_iter();
        Segment::Output {
            values: ValueIter::new(output.values),
            next_panic: panics.next(),
            panics,
            index: 0,
            pid: (output.pid != 0).then_some(output.pid),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Segment::Output {
                values,
                panics,
                next_panic,
                ..
            } => values.len() + panics.len() + usize::from(next_panic.is_some()),
            Segment::Failed { remaining, .. } => *remaining,
        }
    }
}

impl<R> Iterator for Segment<R> {
    type Item = Result<R, TaskError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Segment::Output {
                values,
                panics,
                next_panic,
                index,
                pid,
            } => {
                let at = *index;
                *index += 1;
                if next_panic.as_ref().is_some_and(|p| p.index == at) {
                    let p = std::mem::replace(next_panic, panics.next()).expect("checked");
                    return Some(Err(TaskError::Panicked {
                        message: p.message,
                        location: p.location,
                        pid: *pid,
                    }));
                }
                values.next()
            }
            Segment::Failed { error, remaining } => {
                if *remaining == 0 {
                    return None;
                }
                *remaining -= 1;
                Some(Err(error.clone()))
            }
        }
    }
}

/// Runs `f` over `items`, catching each item's panic on its own so the other
/// items of the chunk still produce their values; `keep` stores each value.
fn run_each<A, R>(
    f: fn(A) -> R,
    items: Vec<A>,
    mut keep: impl FnMut(R) -> Result<(), String>,
) -> Result<Vec<ItemPanic>, String> {
    let mut panics = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match panic_info::catch(|| f(item)) {
            Ok(v) => keep(v)?,
            Err(p) => panics.push(ItemPanic {
                index: index as u32,
                message: p.message,
                location: p.location,
            }),
        }
    }
    Ok(panics)
}

/// Runs `f` over `items` on a thread pool.
pub(crate) fn run_items<A, R>(f: fn(A) -> R, items: Vec<A>, pid: u32) -> ChunkOutput<R> {
    let started = Instant::now();
    let mut values = Vec::with_capacity(items.len());
    let panics = run_each(f, items, |v| {
        values.push(v);
        Ok(())
    })
    .expect("keeping a value cannot fail");
    ChunkOutput {
        values: Values::Plain(values),
        panics,
        nanos: started.elapsed().as_nanos() as u64,
        pid,
    }
}

/// The task function a process pool runs for a chunk: the offset of the
/// user's `fn(A) -> R` and the items. Each value is encoded as soon as its
/// item returns (see [`Values`]).
fn run_chunk<A, R>((func, items): (u64, Vec<A>)) -> ChunkOutput<R>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: the parent named `func` with `FnRef::new::<A, R>` (see
    // `ProcessChunks::start`), which pairs it with exactly this instantiation of
    // `run_chunk`, and the handshake proved this worker is the same build.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(func_ref::to_address(func)) };
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut count = 0u32;
    // An encoding panic unwinds out of here and fails the chunk, as it did
    // when the values were encoded together.
    let ran = run_each(f, items, |v| {
        count += 1;
        rmp_serde::encode::write(&mut crate::buffer::Growing(&mut bytes), &v)
            .map_err(|e| e.to_string())
    });
    let nanos = started.elapsed().as_nanos() as u64;
    let (values, panics) = match ran {
        Ok(panics) => (
            Values::Encoded {
                bytes,
                count,
                decoder: None,
                ready: VecDeque::new(),
                at: 0,
            },
            panics,
        ),
        Err(why) => (Values::EncodeFailed(why), Vec::new()),
    };
    ChunkOutput {
        values,
        panics,
        nanos,
        pid: std::process::id(),
    }
}

/// Starts chunks on some pool.
pub(crate) trait ChunkRunner<A, R>: Send + Sync {
    /// Starts `items` as one task. Returns the items back when a failed chunk
    /// may be retried in parts (a process chunk whose worker died).
    fn start(&self, items: Vec<A>) -> (Task<ChunkOutput<R>>, Option<Vec<A>>);
    /// Number of workers, for sizing.
    fn workers(&self) -> usize;
    /// The slowest worker's measured round trip in nanoseconds (0 = none
    /// measured), for sizing: chunks must be long next to it.
    fn round_trip_nanos(&self) -> u64 {
        0
    }
}

/// Chunks on a process pool.
pub(crate) struct ProcessChunks<A, R> {
    pub(crate) pool: ProcessPool,
    pub(crate) f: fn(A) -> R,
}

impl<A, R> ChunkRunner<A, R> for ProcessChunks<A, R>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn start(&self, items: Vec<A>) -> (Task<ChunkOutput<R>>, Option<Vec<A>>) {
        let func = match FnRef::new(self.f) {
            Ok(r) => r.func,
            Err(why) => return (Task::failed(TaskError::Unsupported(why)), None),
        };
        // Serialised from a borrow: the items stay here, ready for a retry.
        let task = self
            .pool
            .spawn_serialized(run_chunk::<A, R>, &(func, items.as_slice()));
        (task, Some(items))
    }

    fn workers(&self) -> usize {
        self.pool.workers()
    }

    fn round_trip_nanos(&self) -> u64 {
        self.pool.round_trip_nanos()
    }
}

/// Chunks on a thread pool: panics are caught per item and a thread cannot
/// crash alone, so nothing is kept for retries.
pub(crate) struct ThreadChunks<A, R> {
    pub(crate) pool: ThreadPool,
    pub(crate) f: fn(A) -> R,
}

impl<A, R> ChunkRunner<A, R> for ThreadChunks<A, R>
where
    A: Send + 'static,
    R: Send + 'static,
{
    fn start(&self, items: Vec<A>) -> (Task<ChunkOutput<R>>, Option<Vec<A>>) {
        let f = self.f;
        (self.pool.spawn_fn(move || run_items(f, items, 0)), None)
    }

    fn workers(&self) -> usize {
        self.pool.workers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn halve(x: u32) -> u32 {
        assert!(x % 2 == 0, "odd input {x}");
        x / 2
    }

    /// Decodes as its number, but refuses 13 and panics on 14.
    #[derive(Debug, PartialEq)]
    struct Picky(u32);

    impl<'de> Deserialize<'de> for Picky {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            match u32::deserialize(d)? {
                13 => Err(serde::de::Error::custom("no 13")),
                14 => panic!("no 14 either"),
                n => Ok(Picky(n)),
            }
        }
    }

    fn identity(x: u32) -> u32 {
        x
    }

    /// Runs a chunk as a worker does, and decodes its output as the parent
    /// does, as `R2`.
    fn through_a_worker<R2: DeserializeOwned>(items: Vec<u32>) -> Vec<Result<R2, TaskError>> {
        let func = FnRef::new(identity).unwrap().func;
        let output: ChunkOutput<u32> = run_chunk((func, items));
        let bytes = rmp_serde::to_vec(&output).unwrap();
        let back: ChunkOutput<R2> = rmp_serde::from_slice(&bytes).unwrap();
        Segment::output(back).collect()
    }

    #[test]
    fn encoded_values_decode_in_order() {
        let out = through_a_worker::<u32>(vec![5, 1, 300, 70_000, 0]);
        assert_eq!(out, [Ok(5), Ok(1), Ok(300), Ok(70_000), Ok(0)]);
        assert!(through_a_worker::<u32>(vec![]).is_empty());
    }

    #[test]
    fn a_value_that_fails_to_decode_fails_alone() {
        let out = through_a_worker::<Picky>(vec![1, 13, 2, 14, 3]);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], Ok(Picky(1)));
        assert!(matches!(
            &out[1],
            Err(TaskError::Serialization { stage: crate::CodecStage::DecodeResult, message })
                if message.contains("no 13")
        ));
        assert_eq!(out[2], Ok(Picky(2)));
        assert!(matches!(
            &out[3],
            Err(TaskError::Serialization { stage: crate::CodecStage::DecodeResult, message })
                if message.contains("panicked") && message.contains("no 14")
        ));
        assert_eq!(out[4], Ok(Picky(3)));
    }

    #[test]
    fn values_left_to_the_consumer_decode_in_batches_and_fail_alone() {
        let items: Vec<u32> = (0..300)
            .map(|i| match i {
                50 | 147 => 13,
                70 | 201 => 14,
                i => i + 100,
            })
            .collect();
        let func = FnRef::new(identity).unwrap().func;
        let ChunkOutput { values, .. } = run_chunk::<u32, u32>((func, items.clone()));
        let Values::Encoded { bytes, count, .. } = values else {
            panic!("encoded values expected")
        };
        for budget in [std::time::Duration::ZERO, std::time::Duration::from_secs(1)] {
            let values = Values::<Picky>::decoded_for(budget, bytes.clone(), count);
            let mut values = ValueIter::new(values);
            assert_eq!(values.len(), items.len());
            let out: Vec<_> = std::iter::from_fn(|| values.next()).collect();
            assert_eq!(out.len(), items.len());
            for (item, got) in items.iter().zip(&out) {
                match item {
                    13 | 14 => assert!(
                        matches!(got, Err(TaskError::Serialization { .. })),
                        "{got:?}"
                    ),
                    &n => assert_eq!(got, &Ok(Picky(n))),
                }
            }
        }
    }

    /// Encodes as its number, but refuses 7.
    struct NoSeven(u32);

    impl Serialize for NoSeven {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if self.0 == 7 {
                return Err(serde::ser::Error::custom("no 7"));
            }
            s.serialize_u32(self.0)
        }
    }

    fn no_seven(x: u32) -> NoSeven {
        NoSeven(x)
    }

    #[test]
    fn a_value_that_fails_to_encode_fails_the_chunk_encoding() {
        // The chunk then fails as a whole with an encoding error, which the
        // map retries in parts down to the item.
        let func = FnRef::new(no_seven).unwrap().func;
        let fine: ChunkOutput<NoSeven> = run_chunk((func, vec![1, 2]));
        assert!(rmp_serde::to_vec(&fine).is_ok());
        let bad: ChunkOutput<NoSeven> = run_chunk((func, vec![1, 7, 2]));
        let err = rmp_serde::to_vec(&bad).unwrap_err();
        assert!(err.to_string().contains("no 7"), "{err}");
    }

    #[test]
    fn panics_are_attributed_to_their_items() {
        let segment = Segment::output(run_items(halve, vec![2, 3, 4, 5, 6], 0));
        assert_eq!(segment.len(), 5);
        let out: Vec<_> = segment.collect();
        assert_eq!(out.len(), 5);
        assert_eq!(out[0], Ok(1));
        assert!(
            matches!(&out[1], Err(TaskError::Panicked { message, .. }) if message == "odd input 3")
        );
        assert_eq!(out[2], Ok(2));
        assert!(
            matches!(&out[3], Err(TaskError::Panicked { message, .. }) if message == "odd input 5")
        );
        assert_eq!(out[4], Ok(3));
    }
}
