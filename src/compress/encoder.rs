//! Encoders: streaming ones that flush after every chunk, and whole-body ones that compress a
//! response of known length in one call once its last byte has arrived.

use std::io::Write;

use bytes::Bytes;
use prometheus::IntCounter;

use crate::metrics;

use super::*;

// === Encoder ===

/// A streaming encoder's state.
enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

enum Mode {
    Stream(Inner),
    /// The chunks of a whole body so far (shared, not copied).
    Whole {
        level: u32,
        chunks: Vec<Bytes>,
    },
}

/// An encoder of one response body.
///
/// Streaming ([`Encoder::new`]): every chunk in is flushed out at once (a sync flush), so a
/// client sees each chunk as soon as the upstream sends it; memory is the encoder's window and
/// one chunk.
///
/// Whole-body ([`Encoder::whole`], for a body whose length is known and bounded): chunks are
/// kept until the last one, then the body is compressed in one call (gzip by libdeflate). No
/// sync flushes, no stream state between chunks: fewer bytes out for fewer instructions, at the
/// price of the client seeing the first byte when the upstream's last has arrived.
pub struct Encoder {
    algorithm: Algorithm,
    /// `None` once the end has been encoded.
    mode: Option<Mode>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

impl Encoder {
    /// A new streaming encoder; `level` must be in the algorithm's range (config validation
    /// ensures it).
    pub fn new(algorithm: Algorithm, level: u32) -> std::io::Result<Encoder> {
        let inner = match algorithm {
            Algorithm::Gzip => Inner::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            // 4 KiB buffer, 2^19 window: the same as Pingora's brotli encoder.
            Algorithm::Brotli => Inner::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level,
                19,
            ))),
            Algorithm::Zstd => Inner::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                i32::try_from(level).unwrap_or(3),
            )?),
        };
        Ok(Encoder::with_mode(algorithm, Mode::Stream(inner)))
    }

    /// A whole-body encoder.
    pub fn whole(algorithm: Algorithm, level: u32) -> Encoder {
        let chunks = Vec::new();
        Encoder::with_mode(algorithm, Mode::Whole { level, chunks })
    }

    fn with_mode(algorithm: Algorithm, mode: Mode) -> Encoder {
        let label = algorithm.as_str();
        Encoder {
            algorithm,
            mode: Some(mode),
            bytes_in: metrics::COMPRESSION_BYTES.with_label_values(&[label, "in"]),
            bytes_out: metrics::COMPRESSION_BYTES.with_label_values(&[label, "out"]),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether the stream has been finished.
    pub fn is_finished(&self) -> bool {
        self.mode.is_none()
    }

    /// Encodes one chunk and returns everything it produced: flushed, or the end of the stream
    /// when `end`. After the end it returns nothing. A whole-body encoder returns nothing until
    /// the end.
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        match self.mode {
            Some(Mode::Whole { .. }) => self.encode_bytes(Bytes::copy_from_slice(input), end),
            _ => self.encode_slice(input, end),
        }
    }

    /// [`Encoder::encode`] for a chunk the caller owns: a whole-body encoder keeps it without a
    /// copy.
    pub fn encode_bytes(&mut self, input: Bytes, end: bool) -> std::io::Result<Bytes> {
        let Some(Mode::Whole { chunks, .. }) = self.mode.as_mut() else {
            return self.encode_slice(&input, end);
        };
        if !input.is_empty() {
            chunks.push(input);
        }
        if !end {
            return Ok(Bytes::new());
        }
        let Some(Mode::Whole { level, chunks }) = self.mode.take() else {
            unreachable!("matched above");
        };
        let body: std::borrow::Cow<[u8]> = match chunks.as_slice() {
            [one] => std::borrow::Cow::Borrowed(one),
            _ => std::borrow::Cow::Owned(chunks.concat()),
        };
        let out = compress_whole(self.algorithm, level, &body)?;
        self.bytes_in.inc_by(body.len() as u64);
        self.bytes_out.inc_by(out.len() as u64);
        Ok(Bytes::from(out))
    }

    /// A streaming encoder's [`Encoder::encode`].
    fn encode_slice(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        let Some(Mode::Stream(inner)) = self.mode.as_mut() else {
            return Ok(Bytes::new());
        };
        match inner {
            Inner::Gzip(w) => w.write_all(input)?,
            Inner::Brotli(w) => w.write_all(input)?,
            Inner::Zstd(w) => w.write_all(input)?,
        }
        let out = if end {
            match self.mode.take() {
                Some(Mode::Stream(Inner::Gzip(w))) => w.finish()?,
                Some(Mode::Stream(Inner::Brotli(w))) => w.into_inner(),
                Some(Mode::Stream(Inner::Zstd(w))) => w.finish()?,
                _ => unreachable!("matched above"),
            }
        } else if input.is_empty() {
            Vec::new()
        } else {
            match inner {
                Inner::Gzip(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
                Inner::Brotli(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
                Inner::Zstd(w) => {
                    w.flush()?;
                    std::mem::take(w.get_mut())
                }
            }
        };
        self.bytes_in.inc_by(input.len() as u64);
        self.bytes_out.inc_by(out.len() as u64);
        Ok(Bytes::from(out))
    }
}

// === Whole bodies ===

/// A worker thread's libdeflate state, reused by every response it compresses whole.
#[derive(Default)]
struct Deflate {
    /// Compressors by level: each holds its match finder's tables (up to ~1 MiB).
    compressors: Vec<(u32, libdeflater::Compressor)>,
    /// Output room of the bound's size, grown as needed, so a response allocates only its own
    /// compressed length.
    scratch: Vec<u8>,
}

thread_local! {
    static DEFLATE: std::cell::RefCell<Deflate> = std::cell::RefCell::default();
}

/// `body` compressed in one call: gzip by libdeflate (its levels 1–9 are gzip's), br and zstd
/// by their one-shot encoders.
pub fn compress_whole(algorithm: Algorithm, level: u32, body: &[u8]) -> std::io::Result<Vec<u8>> {
    match algorithm {
        Algorithm::Gzip => DEFLATE.with(|cell| {
            let Deflate {
                compressors,
                scratch,
            } = &mut *cell.borrow_mut();
            let i = match compressors.iter().position(|(l, _)| *l == level) {
                Some(i) => i,
                None => {
                    let lvl = libdeflater::CompressionLvl::new(level as i32)
                        .map_err(|e| std::io::Error::other(format!("gzip level {level}: {e:?}")))?;
                    compressors.push((level, libdeflater::Compressor::new(lvl)));
                    compressors.len() - 1
                }
            };
            let compressor = &mut compressors[i].1;
            let bound = compressor.gzip_compress_bound(body.len());
            if scratch.len() < bound {
                scratch.resize(bound, 0);
            }
            let n = compressor
                .gzip_compress(body, scratch)
                .map_err(|e| std::io::Error::other(format!("gzip: {e:?}")))?;
            // Exactly the compressed length: the cache may keep it.
            Ok(scratch[..n].to_vec())
        }),
        Algorithm::Brotli => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, level, 19);
            w.write_all(body)?;
            Ok(w.into_inner())
        }
        Algorithm::Zstd => zstd::bulk::compress(body, i32::try_from(level).unwrap_or(3)),
    }
}
