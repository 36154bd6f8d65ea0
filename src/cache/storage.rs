//! Pingora [`Storage`] over two tiers: a bounded in-process L1 (moka, weighed in bytes, each entry
//! expiring when its stale windows close) in front of Redis (whole objects: one hash per entry
//! with fields `i` internal meta, `h` header, `b` body, and a `PEXPIRE` at the same moment).
//!
//! Lookup goes L1 → Redis → miss; a Redis hit fills the L1. A finished miss is written to both.
//! Redis failures are counted and behave as a miss or a skipped write (see [`super::backend`]).
//! Objects are written whole when the response ends, so readers never see a partial body; the
//! cache lock makes concurrent misses wait for that.

use std::any::Any;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    Storage,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, PurgeType};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};

use super::backend::Redis;
use super::policy::storage_lifetime;
use crate::metrics;

/// A stored response: serialized meta (internal part and header) and the whole body.
#[derive(Debug)]
pub struct Object {
    internal: Bytes,
    header: Bytes,
    /// The whole meta deserialized, `header` parsed into it, for objects in the L1: Pingora
    /// serializes headers zstd-compressed, and decompressing and parsing them was ~12k of the
    /// ~76k instructions of an L1 hit (`benches/instructions.sh`). A hit through Pingora's cache
    /// clones its header; the fast path ([`L1Hit`]) reads it in place.
    parsed: Option<Arc<CacheMeta>>,
    body: Bytes,
    /// How long the L1 keeps it, from insertion.
    lifetime: Duration,
    /// The gzip body decoded, made on the first L1 hit of a client that does not accept gzip
    /// ([`Hit::serve_decoded`]); `None` inside when it is not valid gzip or decodes to more
    /// than the limit.
    decoded: OnceLock<Option<Bytes>>,
}

/// The serialized header of an empty response: what a hit with a parsed header deserializes
/// next to the internal meta, before it puts the parsed header in place.
fn empty_header() -> &'static [u8] {
    static EMPTY: OnceLock<Vec<u8>> = OnceLock::new();
    EMPTY.get_or_init(|| {
        let header = ResponseHeader::build(200, Some(0)).expect("a 200 header");
        let now = SystemTime::now();
        CacheMeta::new(now, now, 0, 0, header)
            .serialize()
            .map(|(_, h)| h)
            .unwrap_or_default()
    })
}

impl Object {
    /// An object; `parsed` is its header as a [`ResponseHeader`], given for objects that go
    /// into the L1 (`None`: a hit parses `header`).
    fn new(
        internal: Bytes,
        header: Bytes,
        parsed: Option<ResponseHeader>,
        body: Bytes,
        lifetime: Duration,
    ) -> Object {
        Object {
            parsed: parsed
                .and_then(|h| meta_with_header(&internal, h))
                .map(Arc::new),
            internal,
            header,
            body,
            lifetime,
            decoded: OnceLock::new(),
        }
    }

    fn weight(&self) -> u32 {
        // 16-byte key plus moka's own bookkeeping, roughly; the parsed header about twice its
        // names and values.
        let parsed = self.parsed.as_ref().map_or(0, |m| {
            let fields: usize = m
                .response_header()
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len())
                .sum();
            2 * fields + 128
        });
        let decoded = self
            .decoded
            .get()
            .and_then(|d| d.as_ref())
            .map_or(0, |d| d.len());
        let n = self.internal.len() + self.header.len() + self.body.len() + parsed + decoded + 96;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn meta(&self) -> Result<CacheMeta> {
        match &self.parsed {
            Some(parsed) => {
                let mut meta = CacheMeta::deserialize(&self.internal, empty_header())?;
                *meta.response_header_mut() = parsed.response_header_copy();
                Ok(meta)
            }
            None => CacheMeta::deserialize(&self.internal, &self.header),
        }
    }

    /// The meta and a hit handler; `l1` is this object as the L1 keeps it, for
    /// [`Hit::serve_decoded`].
    fn hit(&self, l1: Option<L1Entry>) -> Result<(CacheMeta, HitHandler)> {
        let meta = self.meta()?;
        Ok((meta, Box::new(Hit::whole(self.body.clone(), l1))))
    }
}

/// The meta serialized as `internal`, with `header` in place of its (empty) serialized header;
/// `None` when `internal` does not decode.
fn meta_with_header(internal: &[u8], header: ResponseHeader) -> Option<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, empty_header()).ok()?;
    *meta.response_header_mut() = header;
    Some(meta)
}

/// Whether a response with this header is framed by chunks: a status with a body and no
/// `Content-Length` (a body the gateway compressed for storing, an origin's chunked answer).
/// Such a header is stored with the body's length ([`with_length`]); a hit of one stored
/// without (before that, or if it did not serialize) is sent chunked.
pub(super) fn lacks_length(header: &ResponseHeader) -> bool {
    let status = header.status.as_u16();
    !header.status.is_informational()
        && !matches!(status, 204 | 304)
        && !header.headers.contains_key(http::header::CONTENT_LENGTH)
}

/// The serialized and the parsed header of a stored response with `Content-Length: len` in
/// place of chunked framing, so that its hits (through Pingora's cache and the fast path alike)
/// are sent with a length: HTTP/1.0 clients and progress bars need one, and Pingora serves byte
/// ranges only of a response with one. The serialized form is made again only with
/// `reserialize` (for Redis, or an object without a parsed header): Pingora compresses it with
/// zstd, ~35k instructions a miss. Without, `serialized` stays as it was, read by nobody: an L1
/// object's hits read its parsed header. Unchanged (`serialized`, `parsed`) if the header does
/// not serialize.
fn with_length(
    internal: &[u8],
    serialized: Bytes,
    parsed: ResponseHeader,
    len: usize,
    reserialize: bool,
) -> (Bytes, ResponseHeader) {
    let mut header = parsed.clone();
    header.remove_header(&http::header::TRANSFER_ENCODING);
    if header
        .insert_header(http::header::CONTENT_LENGTH, len.to_string())
        .is_err()
    {
        return (serialized, parsed);
    }
    if !reserialize {
        return (serialized, header);
    }
    match meta_with_header(internal, header.clone()).map(|m| m.serialize()) {
        Some(Ok((_, bytes))) => (Bytes::from(bytes), header),
        _ => (serialized, parsed),
    }
}

/// `body` gunzipped (all members), or `None` when it is not valid gzip or decodes to more than
/// `max` bytes.
fn gunzip(body: &[u8], max: usize) -> Option<Bytes> {
    use std::io::Read;
    let mut out = Vec::with_capacity((body.len() * 4).min(max));
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(max as u64 + 1);
    decoder.read_to_end(&mut out).ok()?;
    (out.len() <= max).then(|| Bytes::from(out))
}

struct ObjectExpiry;

impl moka::Expiry<u128, Arc<Object>> for ObjectExpiry {
    fn expire_after_create(&self, _k: &u128, v: &Arc<Object>, _at: Instant) -> Option<Duration> {
        Some(v.lifetime)
    }
    fn expire_after_update(
        &self,
        _k: &u128,
        v: &Arc<Object>,
        _at: Instant,
        left: Option<Duration>,
    ) -> Option<Duration> {
        // An object with its decoded copy made is the same entry put back to be weighed again
        // ([`TieredStorage::reweigh`]): it keeps the time it had left. Any other update is a
        // new object (a refill or revalidation) with its own lifetime.
        match v.decoded.get() {
            Some(_) => left.or(Some(v.lifetime)),
            None => Some(v.lifetime),
        }
    }
}

/// The two-tier storage. Leaked once per process: Pingora wants `&'static`.
pub struct TieredStorage {
    l1: Option<moka::sync::Cache<u128, Arc<Object>>>,
    redis: Option<&'static Redis>,
    prefix: String,
    max_ttl: Duration,
}

impl std::fmt::Debug for TieredStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStorage")
            .field(
                "l1_bytes",
                &self.l1.as_ref().map(|c| c.policy().max_capacity()),
            )
            .field("redis", &self.redis.is_some())
            .finish()
    }
}

impl TieredStorage {
    /// Storage with an L1 of `l1_max_bytes` (0: none) and optionally Redis.
    pub fn new(
        l1_max_bytes: u64,
        redis: Option<&'static Redis>,
        prefix: &str,
        max_ttl: Duration,
    ) -> TieredStorage {
        let l1 = (l1_max_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(l1_max_bytes)
                .weigher(|_k: &u128, v: &Arc<Object>| v.weight())
                .expire_after(ObjectExpiry)
                .build()
        });
        TieredStorage {
            l1,
            redis,
            prefix: prefix.to_string(),
            max_ttl,
        }
    }

    /// Drops every L1 entry (after a purge of everything).
    pub fn clear_l1(&self) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
    }

    /// Sets the L1 gauges (`omsgate_cache_l1_bytes`, `omsgate_cache_l1_entries`).
    pub fn refresh_gauges(&self) {
        if let Some(l1) = &self.l1 {
            l1.run_pending_tasks();
            metrics::CACHE_L1_BYTES.set(l1.weighted_size() as i64);
            metrics::CACHE_L1_ENTRIES.set(l1.entry_count() as i64);
        }
    }

    /// `{prefix}obj:{HASH}`: the entry's own hash is its hash tag, so that entries (one key,
    /// one command each) spread evenly over a Redis Cluster's slots, a hot tenant's too.
    fn redis_key(&self, id: &HashBinary) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 38);
        k.push_str(&self.prefix);
        k.push_str("obj:{");
        for b in id {
            let _ = write!(k, "{b:02x}");
        }
        k.push('}');
        k
    }

    /// Puts `obj` back in the L1 so that its weight counts the decoded copy it now holds;
    /// nothing when the entry was replaced or dropped meanwhile.
    fn reweigh(&self, key: u128, obj: &Arc<Object>) {
        use moka::ops::compute::Op;
        if let Some(l1) = &self.l1 {
            let _ = l1.entry(key).and_compute_with(|entry| match entry {
                Some(e) if Arc::ptr_eq(e.value(), obj) => Op::Put(obj.clone()),
                _ => Op::Nop,
            });
        }
    }

    /// The entry under `key` when the L1 holds it: the lookup of the fresh-hit fast path
    /// ([`super::fresh_l1_hit`]), which never asks Redis and reads the meta in place.
    pub(super) fn l1_hit(&'static self, key: &CacheKey) -> Option<L1Hit> {
        let l1 = self.l1.as_ref()?;
        let k = u128::from_be_bytes(key.combined_bin());
        let obj = l1.get(&k)?;
        let meta = obj.parsed.clone()?;
        let hit = Hit::whole(obj.body.clone(), Some((obj, self, k)));
        Some(L1Hit { meta, hit })
    }

    fn l1_put(&self, id: HashBinary, obj: Arc<Object>) {
        if let Some(l1) = &self.l1 {
            l1.insert(u128::from_be_bytes(id), obj);
        }
    }

    async fn redis_get(&'static self, redis: &'static Redis, id: &HashBinary) -> Option<Object> {
        let key = self.redis_key(id);
        let fields: Vec<Option<Vec<u8>>> = redis
            .call("lookup", |mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("i")
                    .arg("h")
                    .arg("b")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut it = fields.into_iter();
        let (Some(Some(i)), Some(Some(h)), Some(Some(b))) = (it.next(), it.next(), it.next())
        else {
            return None;
        };
        Some(Object::new(
            Bytes::from(i),
            Bytes::from(h),
            None,
            Bytes::from(b),
            Duration::ZERO,
        ))
    }

    async fn redis_put(&'static self, id: &HashBinary, obj: &Object) {
        let Some(redis) = self.redis else { return };
        let key = self.redis_key(id);
        let ms = obj.lifetime.as_millis().max(1) as u64;
        let (i, h, b) = (obj.internal.clone(), obj.header.clone(), obj.body.clone());
        let _: Option<()> = redis
            .call("store", |mut c| async move {
                redis::pipe()
                    .atomic()
                    .cmd("HSET")
                    .arg(&key)
                    .arg("i")
                    .arg(&i[..])
                    .arg("h")
                    .arg(&h[..])
                    .arg("b")
                    .arg(&b[..])
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ms)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
    }
}

#[async_trait]
impl Storage for TieredStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let id = key.combined_bin();
        if let Some(l1) = &self.l1 {
            let key = u128::from_be_bytes(id);
            if let Some(obj) = l1.get(&key) {
                return obj.hit(Some((obj.clone(), self, key))).map(Some);
            }
        }
        let Some(redis) = self.redis else {
            return Ok(None);
        };
        let Some(mut obj) = self.redis_get(redis, &id).await else {
            return Ok(None);
        };
        let (meta, hit) = match obj.hit(None) {
            Ok(h) => h,
            Err(e) => {
                // Written by another version or damaged: a miss, and the next store replaces it.
                tracing::debug!(error = %e, "Cache entry from Redis does not decode; treating it as a miss.");
                return Ok(None);
            }
        };
        if let Some(life) = storage_lifetime(&meta, self.max_ttl, SystemTime::now()) {
            if self.l1.is_some() {
                obj.lifetime = life;
                obj.parsed =
                    meta_with_header(&obj.internal, meta.response_header_copy()).map(Arc::new);
                self.l1_put(id, Arc::new(obj));
            }
        }
        Ok(Some((meta, hit)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let (internal, header) = meta.serialize()?;
        let add_length = lacks_length(meta.response_header());
        Ok(Box::new(Miss {
            storage: self,
            id: key.combined_bin(),
            route: key.user_tag.clone(),
            internal: Bytes::from(internal),
            header: Bytes::from(header),
            parsed: (self.l1.is_some() || add_length).then(|| meta.response_header_copy()),
            add_length,
            body: BytesMut::new(),
            lifetime: storage_lifetime(meta, self.max_ttl, SystemTime::now()),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let id = target.key().combined_bin();
        let mut found = false;
        if let Some(l1) = &self.l1 {
            found |= l1.remove(&u128::from_be_bytes(id)).is_some();
        }
        if let Some(redis) = self.redis {
            let key = self.redis_key(&id);
            let n: Option<u64> = redis
                .call("purge", |mut c| async move {
                    redis::cmd("DEL").arg(&key).query_async(&mut c).await
                })
                .await;
            found |= n.unwrap_or(0) > 0;
        }
        Ok(if found {
            PurgeOutcome::Purged(None)
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let id = key.combined_bin();
        let (internal, header) = meta.serialize()?;
        let (internal, header) = (Bytes::from(internal), Bytes::from(header));
        let Some(life) = storage_lifetime(meta, self.max_ttl, SystemTime::now()) else {
            return Ok(false);
        };
        if let Some(l1) = &self.l1 {
            if let Some(old) = l1.get(&u128::from_be_bytes(id)) {
                self.l1_put(
                    id,
                    Arc::new(Object::new(
                        internal.clone(),
                        header.clone(),
                        Some(meta.response_header_copy()),
                        old.body.clone(),
                        life,
                    )),
                );
            }
        }
        if let Some(redis) = self.redis {
            let rkey = self.redis_key(&id);
            let ms = life.as_millis().max(1) as u64;
            let _: Option<i64> = redis
                .call("update_meta", |mut c| async move {
                    UPDATE_META
                        .key(&rkey)
                        .arg(&internal[..])
                        .arg(&header[..])
                        .arg(ms)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
        }
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Rewrites the meta of an entry that still exists, keeping its body.
static UPDATE_META: once_cell::sync::Lazy<redis::Script> = once_cell::sync::Lazy::new(|| {
    redis::Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 1 then
            redis.call('HSET', KEYS[1], 'i', ARGV[1], 'h', ARGV[2])
            redis.call('PEXPIRE', KEYS[1], ARGV[3])
            return 1
          end
          return 0",
    )
});

// === impl L1Hit ===

/// An L1 entry found by the fast path: its meta, read in place, and a hit on its body.
pub(super) struct L1Hit {
    meta: Arc<CacheMeta>,
    hit: Hit,
}

impl L1Hit {
    /// The stored meta.
    pub(super) fn meta(&self) -> &CacheMeta {
        &self.meta
    }

    /// The meta and the hit, to switch the hit to the decoded copy ([`Hit::serve_decoded`]).
    pub(super) fn parts(&mut self) -> (&CacheMeta, &mut Hit) {
        (&self.meta, &mut self.hit)
    }

    /// The body the hit serves.
    pub(super) fn into_body(self) -> Bytes {
        self.hit.into_body()
    }
}

// === impl Hit ===

/// An object in the L1: the object, the storage and its key there.
type L1Entry = (Arc<Object>, &'static TieredStorage, u128);

/// Serves a stored body, with seeking for ranges.
pub(super) struct Hit {
    body: Bytes,
    done: bool,
    start: usize,
    end: usize,
    /// Set for a hit from the L1.
    l1: Option<L1Entry>,
}

impl Hit {
    /// A hit serving all of `body`; `l1` is set for an object in the L1.
    fn whole(body: Bytes, l1: Option<L1Entry>) -> Hit {
        Hit {
            end: body.len(),
            body,
            done: false,
            start: 0,
            l1,
        }
    }

    /// The body this hit serves (the decoded copy after [`serve_decoded`](Self::serve_decoded)).
    pub(super) fn into_body(self) -> Bytes {
        self.body.slice(self.start..self.end)
    }

    /// Switches this hit to the object's body gunzipped, made once per L1 entry and kept next
    /// to it (counted in its weight), and returns its length. `None` (the hit is unchanged) for
    /// a hit from Redis only, or a body that is not valid gzip or decodes to more than `max`.
    pub(super) fn serve_decoded(&mut self, max: usize) -> Option<usize> {
        let (obj, storage, key) = self.l1.as_ref()?;
        let mut made = false;
        let decoded = obj.decoded.get_or_init(|| {
            made = true;
            gunzip(&obj.body, max)
        });
        let result = match (decoded, made) {
            (None, _) => "skipped",
            (Some(_), true) => "made",
            (Some(_), false) => "reused",
        };
        metrics::CACHE_DECODED.with_label_values(&[result]).inc();
        let decoded = decoded.clone()?;
        if made {
            storage.reweigh(*key, obj);
        }
        self.end = decoded.len();
        self.body = decoded;
        self.start = 0;
        self.done = false;
        Some(self.end)
    }
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body.len() {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body.len()),
            );
        }
        self.start = start;
        self.end = end.map_or(self.body.len(), |e| e.min(self.body.len()));
        self.done = false;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.body.len()
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

// === impl Miss ===

/// Buffers a response body and writes the whole object when it ends.
struct Miss {
    storage: &'static TieredStorage,
    id: HashBinary,
    route: String,
    internal: Bytes,
    header: Bytes,
    /// The header as given, for the L1's object and for [`Miss::add_length`] (`None` when
    /// neither needs it).
    parsed: Option<ResponseHeader>,
    /// The header frames the body by chunks (no `Content-Length`): the stored header gets the
    /// body's length instead, known once the body is complete ([`with_length`]).
    add_length: bool,
    body: BytesMut,
    /// `None` when the response is already past its stale windows (nothing to store).
    lifetime: Option<Duration>,
}

#[async_trait]
impl HandleMiss for Miss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let size = self.body.len();
        let Some(lifetime) = self.lifetime else {
            return Ok(MissFinishType::Created(0));
        };
        let (header, parsed) = match (self.add_length, self.parsed) {
            (true, Some(parsed)) => {
                let l1 = self.storage.l1.is_some();
                let reserialize = self.storage.redis.is_some() || !l1;
                let (header, parsed) =
                    with_length(&self.internal, self.header, parsed, size, reserialize);
                (header, l1.then_some(parsed))
            }
            (_, parsed) => (self.header, parsed),
        };
        let obj = Arc::new(Object::new(
            self.internal,
            header,
            parsed,
            self.body.freeze(),
            lifetime,
        ));
        self.storage.l1_put(self.id, obj.clone());
        self.storage.redis_put(&self.id, &obj).await;
        metrics::CACHE_STORES
            .with_label_values(&[&self.route])
            .inc();
        Ok(MissFinishType::Created(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(s: TieredStorage) -> &'static TieredStorage {
        Box::leak(Box::new(s))
    }

    /// Storage with a 1 MiB L1 and no Redis, a key and a trace span.
    fn l1_only() -> (&'static TieredStorage, CacheKey, SpanHandle) {
        let s = leak(TieredStorage::new(
            1 << 20,
            None,
            "t:",
            Duration::from_secs(60),
        ));
        let span = pingora::cache::trace::Span::inactive().handle();
        (s, CacheKey::new("k1", "route"), span)
    }

    fn meta(fresh: Duration) -> CacheMeta {
        let now = SystemTime::now();
        CacheMeta::new(
            now + fresh,
            now,
            0,
            0,
            ResponseHeader::build(200, None).unwrap(),
        )
    }

    async fn read_all(mut h: HitHandler) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = h.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        out
    }

    #[tokio::test]
    async fn memory_tier_stores_and_serves() {
        let (s, key, span) = l1_only();
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
        let mut miss = s
            .get_miss_handler(&key, &meta(Duration::from_secs(10)), &span)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"hello "), false)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"world"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let (m, hit) = s.lookup(&key, &span).await.unwrap().unwrap();
        assert_eq!(m.response_header().status, 200);
        assert_eq!(read_all(hit).await, b"hello world");
        // another key is not found
        assert!(s
            .lookup(&CacheKey::new("k2", "route"), &span)
            .await
            .unwrap()
            .is_none());
        // purge removes it
        let compact = key.to_compact();
        s.purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span,
        )
        .await
        .unwrap();
        assert!(s.lookup(&key, &span).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hits_seek() {
        let mut h = Hit::whole(Bytes::from_static(b"0123456789"), None);
        h.seek(2, Some(5)).unwrap();
        assert_eq!(h.read_body().await.unwrap().unwrap(), "234");
        assert!(h.read_body().await.unwrap().is_none());
        assert!(h.seek(10, None).is_err());
    }

    /// An L1 hit's meta, built from the parsed header, is the meta that was stored: the same
    /// header (names, case, order), times, stale windows and variance.
    #[tokio::test]
    async fn l1_hit_meta_is_the_stored_meta() {
        let (s, key, span) = l1_only();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .insert_header("Content-Type", "application/json")
            .unwrap();
        header.append_header("X-Multi", "a").unwrap();
        header.append_header("X-Multi", "b").unwrap();
        header.insert_header("ETag", "\"v1\"").unwrap();
        // With its length: stored as it is (see the next test for one without).
        header.insert_header("Content-Length", "2").unwrap();
        let now = SystemTime::now();
        let mut stored = CacheMeta::new(now + Duration::from_secs(30), now, 7, 9, header);
        stored.set_variance_key(pingora::cache::key::hash_key("accept-language=fr"));
        let mut miss = s.get_miss_handler(&key, &stored, &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"{}"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();

        let (hit, _) = s.lookup(&key, &span).await.unwrap().unwrap();
        let (i, h) = stored.serialize().unwrap();
        let full = CacheMeta::deserialize(&i, &h).unwrap();
        assert_eq!(hit.serialize().unwrap(), (i, h));
        assert_eq!(hit.variance(), full.variance());
        assert_eq!(hit.fresh_until(), full.fresh_until());
        assert_eq!(hit.updated(), full.updated());
        assert_eq!(hit.stale_while_revalidate_sec(), 7);
        assert_eq!(hit.stale_if_error_sec(), 9);
        let headers = |m: &CacheMeta| format!("{:?}", m.response_header());
        assert_eq!(headers(&hit), headers(&full));
        // The object in the L1 holds the parsed header.
        let l1 = s.l1.as_ref().unwrap();
        assert!(l1
            .get(&u128::from_be_bytes(key.combined_bin()))
            .unwrap()
            .parsed
            .is_some());
    }

    /// A header that frames its body by chunks is stored with the body's length instead: in
    /// the L1 object's parsed header, and serialized (what Redis gets) when asked to.
    #[tokio::test]
    async fn a_chunked_header_is_stored_with_the_body_length() {
        let (s, key, span) = l1_only();
        let mut header = ResponseHeader::build(200, None).unwrap();
        header
            .insert_header("Transfer-Encoding", "chunked")
            .unwrap();
        header.insert_header("Content-Encoding", "gzip").unwrap();
        let now = SystemTime::now();
        let stored = CacheMeta::new(now + Duration::from_secs(30), now, 0, 0, header);
        let mut miss = s.get_miss_handler(&key, &stored, &span).await.unwrap();
        miss.write_body(Bytes::from_static(b"abc"), false)
            .await
            .unwrap();
        miss.write_body(Bytes::from_static(b"de"), true)
            .await
            .unwrap();
        miss.finish().await.unwrap();
        let (hit, _) = s.lookup(&key, &span).await.unwrap().unwrap();
        let h = hit.response_header();
        assert_eq!(h.headers["content-length"], "5");
        assert!(h.headers.get("transfer-encoding").is_none());
        assert_eq!(h.headers["content-encoding"], "gzip");

        let (internal, serialized) = stored.serialize().unwrap();
        let parsed = stored.response_header_copy();
        let (bytes, header) = with_length(&internal, Bytes::from(serialized), parsed, 5, true);
        let again = CacheMeta::deserialize(&internal, &bytes).unwrap();
        assert_eq!(again.response_header().headers["content-length"], "5");
        assert!(again
            .response_header()
            .headers
            .get("transfer-encoding")
            .is_none());
        assert_eq!(
            format!("{:?}", again.response_header()),
            format!("{header:?}")
        );
    }

    #[test]
    fn l1_is_bounded_in_bytes() {
        let s = TieredStorage::new(64 * 1024, None, "t:", Duration::from_secs(60));
        for i in 0..100u32 {
            let obj = Object::new(
                Bytes::new(),
                Bytes::new(),
                None,
                Bytes::from(vec![0u8; 4096]),
                Duration::from_secs(60),
            );
            s.l1_put(
                pingora::cache::key::hash_key(i.to_le_bytes()),
                Arc::new(obj),
            );
        }
        let l1 = s.l1.as_ref().unwrap();
        l1.run_pending_tasks();
        assert!(l1.weighted_size() <= 64 * 1024, "{}", l1.weighted_size());
        assert!(l1.entry_count() < 100);
    }
}
