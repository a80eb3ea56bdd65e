//! A chunk's values on their way back from a process worker: encoded one by
//! one as their items return, and decoded in batches, partly by whoever reads
//! the chunk's result and the rest by the map's consumer as it yields them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::TaskError;

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

/// Decodes the one value at the front of `bytes` (after a batch failed, so
/// that a failure lands on its value alone). Returns the value, or the error
/// decoding it met, and the bytes after it: `None` when a value that failed
/// cannot even be skipped, so where the next one starts is unknown.
fn decode_alone<R>(
    bytes: &[u8],
    one: fn(&mut &[u8]) -> Result<R, String>,
) -> (Result<R, TaskError>, Option<&[u8]>) {
    let mut rest = bytes;
    let decoded = crate::panic_info::catch(|| one(&mut rest)).unwrap_or_else(|caught| {
        Err(format!(
            "the result's Deserialize panicked: {}",
            caught.message
        ))
    });
    match decoded {
        Ok(value) => (Ok(value), Some(rest)),
        Err(message) => {
            // Find the next value's start from this one's.
            let mut rest = bytes;
            let next = skip_one(&mut rest).ok().map(|()| rest);
            let error = TaskError::Serialization {
                stage: crate::CodecStage::DecodeResult,
                message,
            };
            (Err(error), next)
        }
    }
}

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
                t.serialize_element(serde_bytes::Bytes::new(bytes))?;
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
        let (bytes, count) = <(serde_bytes::ByteBuf, u32)>::deserialize(deserializer)?;
        let bytes = bytes.into_vec();
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
    pub(crate) fn decoded_for(budget: Duration, bytes: Vec<u8>, count: u32) -> Self {
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
    pub(crate) fn new(values: Values<R>) -> Self {
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

    pub(crate) fn len(&self) -> usize {
        match self {
            ValueIter::Plain(v) => v.len(),
            ValueIter::Encoded { left, ready, .. } => left + ready.len(),
        }
    }

    /// The next value. A value that fails to decode (or whose `Deserialize`
    /// panics) is an error for its item alone: the others still decode.
    pub(crate) fn next(&mut self) -> Option<Result<R, TaskError>> {
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
        let (decoded, rest) = decode_alone(&bytes[*at..], decoder.one);
        match rest {
            Some(rest) => *at = bytes.len() - rest.len(),
            None => {
                // Cannot find the next value: the rest fail too (each
                // decoded from nothing).
                *at = bytes.len();
                *careful = *left;
            }
        }
        Some(decoded)
    }
}
