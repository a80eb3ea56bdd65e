//! Running a chunk of map items as one task, and how the two pools start one.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// A chunk's values.
///
/// A process worker encodes each value the moment its item returns and drops
/// it (so its memory is reused at once), and the parent keeps the encoded
/// values as one buffer. The supervisor decodes values for at most
/// [`EAGER_DECODING`] (all of a chunk of numbers), then leaves the rest to the
/// thread that consumes the map, which decodes them in small batches as it
/// yields them: a chunk of values that take long to decode (each a `Vec`,
/// say) no longer holds up the worker's next chunk while the supervisor
/// decodes it, and no `Vec` of all a chunk's decoded values is built.
pub(crate) enum Values<R> {
    /// Values as they are (a thread pool's chunk).
    Plain(Vec<R>),
    /// `count` values, each encoded as MessagePack, back to back.
    Encoded {
        bytes: Vec<u8>,
        count: u32,
        /// How to decode them; set by `Deserialize`, which knows `R`.
        decoder: Option<Decoder<R>>,
        /// The first values, decoded already (by `Deserialize`), and where
        /// the others start.
        ready: VecDeque<R>,
        at: usize,
    },
    /// A value could not be encoded (worker side): the chunk fails with this
    /// message as an encoding error, as if its output had failed to encode.
    EncodeFailed(String),
}

/// Decoding values of `R` from the front of a slice (advancing it).
pub(crate) struct Decoder<R> {
    /// One value.
    one: fn(&mut &[u8]) -> Result<R, String>,
    /// `n` values (see [`DecodeMany`]).
    many: DecodeMany<R>,
}

/// Decodes `n` values, appending them to the queue, or fails at the first
/// that does not decode (the queue then holds those before it).
type DecodeMany<R> = fn(&mut &[u8], usize, &mut VecDeque<R>) -> Result<(), String>;

impl<R> Clone for Decoder<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Decoder<R> {}

impl<R: DeserializeOwned> Decoder<R> {
    fn new() -> Self {
        Decoder {
            one: decode_one::<R>,
            many: decode_many::<R>,
        }
    }
}

fn decode_one<R: DeserializeOwned>(bytes: &mut &[u8]) -> Result<R, String> {
    R::deserialize(&mut rmp_serde::Deserializer::new(bytes)).map_err(|e| e.to_string())
}

fn decode_many<R: DeserializeOwned>(
    bytes: &mut &[u8],
    n: usize,
    out: &mut VecDeque<R>,
) -> Result<(), String> {
    let mut de = rmp_serde::Deserializer::new(bytes);
    for _ in 0..n {
        out.push_back(R::deserialize(&mut de).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// How long the reader of a chunk's result decodes its values before it
/// leaves the rest to the consumer (see `Values`'s `Deserialize`).
const EAGER_DECODING: Duration = Duration::from_micros(50);

/// Values decoded at a time: per-value costs (a decoder, a panic guard) are
/// paid once per batch, which matters for values as small as a number.
const BATCH: usize = 64;

/// Skips one encoded value at the front of `bytes`.
fn skip_one(bytes: &mut &[u8]) -> Result<(), String> {
    <serde::de::IgnoredAny as Deserialize>::deserialize(&mut rmp_serde::Deserializer::new(bytes))
        .map(drop)
        .map_err(|e| e.to_string())
}

impl<R> std::fmt::Debug for Values<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Values::Plain(v) => write!(f, "Plain({} values)", v.len()),
            Values::Encoded { bytes, count, .. } => {
                write!(f, "Encoded({count} values, {} bytes)", bytes.len())
            }
            Values::EncodeFailed(why) => write!(f, "EncodeFailed({why:?})"),
        }
    }
}

/// On the wire: `(bytes, count)`. Only encoded values travel.
impl<R> Serialize for Values<R> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        match self {
            Values::Encoded { bytes, count, .. } => {
                let mut t = serializer.serialize_tuple(2)?;
                t.serialize_element(&Bytes(bytes))?;
                t.serialize_element(count)?;
                t.end()
            }
            Values::EncodeFailed(why) => Err(S::Error::custom(why)),
            Values::Plain(_) => Err(S::Error::custom("a thread pool's chunk is not sent")),
        }
    }
}

impl<'de, R: DeserializeOwned> Deserialize<'de> for Values<R> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (ByteVec(bytes), count) = <(ByteVec, u32)>::deserialize(deserializer)?;
        Ok(Values::decoded_for(EAGER_DECODING, bytes, count))
    }
}

impl<R: DeserializeOwned> Values<R> {
    /// Encoded values, of which those decoded within `budget` are decoded.
    ///
    /// Whoever reads a chunk's result (the supervisor, usually) decodes its
    /// values for a moment: values as cheap as numbers are all decoded there,
    /// off the consumer's thread, and the rest, left to the consumer, does not
    /// hold up the worker's next chunk. A batch that fails is left to the
    /// consumer, which pins the failure on its value.
    fn decoded_for(budget: Duration, bytes: Vec<u8>, count: u32) -> Self {
        let started = Instant::now();
        let mut ready = VecDeque::new();
        let mut rest = &bytes[..];
        let mut left = count as usize;
        while left > 0 && started.elapsed() < budget {
            let n = left.min(BATCH);
            let mut batch = rest;
            let decoded = crate::panic_info::catch(|| decode_many::<R>(&mut batch, n, &mut ready));
            if !matches!(decoded, Ok(Ok(()))) {
                ready.truncate(count as usize - left);
                break;
            }
            rest = batch;
            left -= n;
        }
        Values::Encoded {
            at: bytes.len() - rest.len(),
            bytes,
            count: left as u32,
            decoder: Some(Decoder::new()),
            ready,
        }
    }
}

/// Serialises a byte slice as MessagePack `bin` (one copy, no per-byte work).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

/// Deserialises MessagePack `bin` into an owned buffer.
struct ByteVec(Vec<u8>);

impl<'de> Deserialize<'de> for ByteVec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteVec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteVec, E> {
                Ok(ByteVec(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteVec, E> {
                Ok(ByteVec(v))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
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

/// The values of a chunk, handed out (and decoded, if encoded) one by one.
pub(crate) enum ValueIter<R> {
    Plain(std::vec::IntoIter<R>),
    Encoded {
        bytes: Vec<u8>,
        /// Where the next value to decode starts.
        at: usize,
        /// Values still to decode.
        left: usize,
        decoder: Decoder<R>,
        /// Values decoded, not yet handed out.
        ready: VecDeque<R>,
        /// Values to decode one at a time, after a batch that failed: so the
        /// failure lands on its value alone.
        careful: usize,
    },
}

impl<R> ValueIter<R> {
    fn new(values: Values<R>) -> Self {
        match values {
            Values::Plain(v) => ValueIter::Plain(v.into_iter()),
            Values::Encoded {
                bytes,
                count,
                decoder: Some(decoder),
                ready,
                at,
            } => ValueIter::Encoded {
                bytes,
                at,
                left: count as usize,
                decoder,
                ready,
                careful: 0,
            },
            // (Never yielded: a worker sends neither.)
            Values::Encoded { decoder: None, .. } | Values::EncodeFailed(_) => {
                ValueIter::Plain(Vec::new().into_iter())
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            ValueIter::Plain(v) => v.len(),
            ValueIter::Encoded { left, ready, .. } => left + ready.len(),
        }
    }

    /// The next value. A value that fails to decode (or whose `Deserialize`
    /// panics) is an error for its item alone: the others still decode.
    fn next(&mut self) -> Option<Result<R, TaskError>> {
        let ValueIter::Encoded {
            bytes,
            at,
            left,
            decoder,
            ready,
            careful,
        } = self
        else {
            let ValueIter::Plain(values) = self else {
                unreachable!()
            };
            return values.next().map(Ok);
        };
        if let Some(value) = ready.pop_front() {
            return Some(Ok(value));
        }
        if *left == 0 {
            return None;
        }
        if *careful == 0 {
            let n = (*left).min(BATCH);
            let mut rest = &bytes[*at..];
            let many = decoder.many;
            if let Ok(Ok(())) = crate::panic_info::catch(|| many(&mut rest, n, ready)) {
                *at = bytes.len() - rest.len();
                *left -= n;
                return ready.pop_front().map(Ok);
            }
            ready.clear();
            *careful = n;
        }
        *careful -= 1;
        *left -= 1;
        let mut rest = &bytes[*at..];
        let one = decoder.one;
        let decoded = crate::panic_info::catch(|| one(&mut rest)).unwrap_or_else(|caught| {
            Err(format!(
                "the result's Deserialize panicked: {}",
                caught.message
            ))
        });
        let decoded = match decoded {
            Ok(value) => Ok(value),
            Err(message) => {
                // Find the next value's start from this one's.
                rest = &bytes[*at..];
                if skip_one(&mut rest).is_err() {
                    // Cannot find the next value: the rest fail too (each
                    // decoded from nothing).
                    rest = &[];
                    *careful = *left;
                }
                Err(TaskError::Serialization {
                    stage: crate::CodecStage::DecodeResult,
                    message,
                })
            }
        };
        *at = bytes.len() - rest.len();
        Some(decoded)
    }
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
        for budget in [Duration::ZERO, Duration::from_secs(1)] {
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
