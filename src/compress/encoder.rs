//! Encoders: streaming ones that flush after every chunk, and whole-body ones that compress a
//! response of known length in one call once its last byte has arrived.

use std::io::Write;

use bytes::Bytes;
use prometheus::IntCounter;

use crate::metrics;

use super::*;

// === Encoder ===

enum Inner {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    /// The chunks of a whole body so far (shared, not copied) and their length.
    Whole {
        level: u32,
        chunks: Vec<Bytes>,
        len: usize,
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
    inner: Option<Inner>,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

impl Encoder {
    /// A new encoder; `level` must be in the algorithm's range (config validation ensures it).
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
        let label = algorithm.as_str();
        Ok(Encoder {
            algorithm,
            inner: Some(inner),
            bytes_in: metrics::COMPRESSION_BYTES.with_label_values(&[label, "in"]),
            bytes_out: metrics::COMPRESSION_BYTES.with_label_values(&[label, "out"]),
        })
    }

    /// A whole-body encoder for a body of about `expected` bytes (its `Content-Length`).
    pub fn whole(algorithm: Algorithm, level: u32, expected: usize) -> Encoder {
        let label = algorithm.as_str();
        Encoder {
            algorithm,
            inner: Some(Inner::Whole {
                level,
                // Most bodies arrive in a few chunks; the common case is one.
                chunks: Vec::with_capacity(if expected > 16 * 1024 { 4 } else { 1 }),
                len: 0,
            }),
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
        self.inner.is_none()
    }

    /// Encodes one chunk and returns everything it produced: flushed, or the end of the stream
    /// when `end`. After the end it returns nothing. A whole-body encoder returns nothing until
    /// the end.
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        if let Some(Inner::Whole { .. }) = self.inner {
            return self.encode_bytes(Bytes::copy_from_slice(input), end);
        }
        self.encode_slice(input, end)
    }

    /// [`Encoder::encode`] for a chunk the caller owns: a whole-body encoder keeps it without a
    /// copy.
    pub fn encode_bytes(&mut self, input: Bytes, end: bool) -> std::io::Result<Bytes> {
        let Some(Inner::Whole { chunks, len, .. }) = self.inner.as_mut() else {
            return self.encode_slice(&input, end);
        };
        if !input.is_empty() {
            *len += input.len();
            chunks.push(input);
        }
        if !end {
            return Ok(Bytes::new());
        }
        let Some(Inner::Whole { level, chunks, len }) = self.inner.take() else {
            return Ok(Bytes::new());
        };
        let body: std::borrow::Cow<[u8]> = match chunks.as_slice() {
            [one] => std::borrow::Cow::Borrowed(one),
            _ => std::borrow::Cow::Owned(chunks.concat()),
        };
        let out = compress_whole(self.algorithm, level, &body)?;
        self.bytes_in.inc_by(len as u64);
        self.bytes_out.inc_by(out.len() as u64);
        Ok(Bytes::from(out))
    }

    fn encode_slice(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Bytes::new());
        };
        match inner {
            Inner::Gzip(w) => w.write_all(input)?,
            Inner::Brotli(w) => w.write_all(input)?,
            Inner::Zstd(w) => w.write_all(input)?,
            Inner::Whole { .. } => unreachable!("encode_bytes handles whole bodies"),
        }
        let out = if end {
            match self.inner.take() {
                Some(Inner::Gzip(w)) => w.finish()?,
                Some(Inner::Brotli(w)) => w.into_inner(),
                Some(Inner::Zstd(w)) => w.finish()?,
                Some(Inner::Whole { .. }) | None => Vec::new(),
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
                Inner::Whole { .. } => Vec::new(),
            }
        };
        self.bytes_in.inc_by(input.len() as u64);
        self.bytes_out.inc_by(out.len() as u64);
        Ok(Bytes::from(out))
    }
}

// === Whole bodies ===

thread_local! {
    /// libdeflate compressors by level, one set per worker thread: a compressor holds its
    /// match finder's tables (up to ~1 MiB), reused rather than allocated per response.
    static DEFLATERS: std::cell::RefCell<Vec<(u32, libdeflater::Compressor)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `body` compressed in one call: gzip by libdeflate (its levels 1–9 are gzip's), br and zstd
/// by their one-shot encoders.
pub fn compress_whole(algorithm: Algorithm, level: u32, body: &[u8]) -> std::io::Result<Vec<u8>> {
    match algorithm {
        Algorithm::Gzip => DEFLATERS.with(|cell| {
            let mut deflaters = cell.borrow_mut();
            let i = match deflaters.iter().position(|(l, _)| *l == level) {
                Some(i) => i,
                None => {
                    let lvl = libdeflater::CompressionLvl::new(level as i32)
                        .map_err(|e| std::io::Error::other(format!("gzip level {level}: {e:?}")))?;
                    deflaters.push((level, libdeflater::Compressor::new(lvl)));
                    deflaters.len() - 1
                }
            };
            let compressor = &mut deflaters[i].1;
            let mut out = vec![0; compressor.gzip_compress_bound(body.len())];
            let n = compressor
                .gzip_compress(body, &mut out)
                .map_err(|e| std::io::Error::other(format!("gzip: {e:?}")))?;
            out.truncate(n);
            // The cache may keep it: not the bound's capacity behind a smaller body.
            out.shrink_to_fit();
            Ok(out)
        }),
        Algorithm::Brotli => {
            let mut w = brotli::CompressorWriter::new(Vec::new(), 4096, level, 19);
            w.write_all(body)?;
            Ok(w.into_inner())
        }
        Algorithm::Zstd => zstd::bulk::compress(body, i32::try_from(level).unwrap_or(3)),
    }
}
