//! Streaming encoders that flush after every chunk.

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
}

/// A streaming encoder: every chunk in is flushed out at once (a sync flush), so a client sees
/// each chunk as soon as the upstream sends it; memory is the encoder's window and one chunk.
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

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether the stream has been finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_none()
    }

    /// Encodes one chunk and returns everything it produced: flushed, or the end of the stream
    /// when `end`. After the end it returns nothing.
    pub fn encode(&mut self, input: &[u8], end: bool) -> std::io::Result<Bytes> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(Bytes::new());
        };
        match inner {
            Inner::Gzip(w) => w.write_all(input)?,
            Inner::Brotli(w) => w.write_all(input)?,
            Inner::Zstd(w) => w.write_all(input)?,
        }
        let out = if end {
            match self.inner.take() {
                Some(Inner::Gzip(w)) => w.finish()?,
                Some(Inner::Brotli(w)) => w.into_inner(),
                Some(Inner::Zstd(w)) => w.finish()?,
                None => Vec::new(),
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
