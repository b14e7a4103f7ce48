//! Reading request bodies under the bounds a public endpoint needs: a size limit checked
//! before and during the read, a deadline on the whole read (a client trickling its body a
//! byte at a time cannot hold a worker's connection), and for gzip or zstd bodies the same
//! size limit on the decompressed bytes plus a ceiling on the compression ratio, so a small
//! bomb is refused before it costs memory or time.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::error::ApiError;

/// Decompressed bodies up to this size pass whatever their ratio: tiny, very repetitive
/// batches compress extremely well and cost nothing.
const RATIO_FLOOR: usize = 1 << 20;

/// The largest zstd window accepted, as a power of two (16 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// The bounds on one request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body, before and after decompression, in bytes.
    pub max_bytes: usize,
    /// Longest time from the first to the last byte of the body.
    pub read_timeout: Duration,
    /// Largest ratio of decompressed to compressed size (past the first MiB).
    pub max_ratio: usize,
}

impl BodyLimits {
    /// These bounds with a smaller size limit.
    pub fn at_most(self, max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes: self.max_bytes.min(max_bytes),
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// Reads the body within `limits`: a declared length over the limit is refused before
/// reading, reading stops as soon as the limit is passed or the deadline comes, and a gzip or
/// zstd body is decompressed under the same limit and the ratio ceiling.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    let limit = limits.max_bytes;
    let encoding = match req.headers().get(header::CONTENT_ENCODING) {
        None => Encoding::Identity,
        Some(v) => match v
            .to_str()
            .unwrap_or("?")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "identity" => Encoding::Identity,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "zstd" => Encoding::Zstd,
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "content encoding {other:?} is not supported; use gzip, zstd or none"
                )));
            }
        },
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::BodyTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let body = actix_web::rt::time::timeout(limits.read_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout(limits.read_timeout))??;
    match encoding {
        Encoding::Identity => Ok(body),
        compressed => web::block(move || decompress(compressed, &body, limits))
            .await
            .map_err(|e| ApiError::BodyRead(e.to_string()))?,
    }
}

fn decompress(encoding: Encoding, body: &[u8], limits: BodyLimits) -> Result<Bytes, ApiError> {
    use std::io::Read;
    let bad = |e: std::io::Error| ApiError::BodyRead(format!("cannot decompress the body: {e}"));
    let reader: Box<dyn Read> = match encoding {
        Encoding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Encoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Encoding::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(body).map_err(bad)?;
            // Frames that need a window over 16 MiB (levels above 19, `--long`) are refused
            // rather than given that much memory per request.
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(bad)?;
            Box::new(d)
        }
    };
    let by_ratio = body.len().saturating_mul(limits.max_ratio).max(RATIO_FLOOR);
    let cap = limits.max_bytes.min(by_ratio);
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(cap));
    reader
        .take((cap as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(bad)?;
    if out.len() > limits.max_bytes {
        return Err(ApiError::BodyTooLarge {
            limit: limits.max_bytes,
        });
    }
    if out.len() > cap {
        return Err(ApiError::CompressionRatio {
            compressed: body.len(),
            max_ratio: limits.max_ratio,
        });
    }
    Ok(Bytes::from(out))
}
