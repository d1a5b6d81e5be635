//! App content: synthetic QVF bytes generated on the fly, or uploaded files on disk.
//!
//! Synthetic content is a 64-byte text header (which carries the app's last reload time, so an
//! upload of an exported app keeps it, as a real QVF does) followed by slices of one shared
//! pseudo-random pool chosen from `(seed, chunk index)`. Generating it costs no memory or disk and
//! no per-byte work, so a 4 GiB app streams at memory speed. Uploaded content is streamed to a
//! file and hashed on the way. Every content knows its SHA-256, computed once and cached.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Length of the text header at the start of synthetic content.
pub const HEADER_LEN: usize = 64;
const HEADER_TAG: &str = "QVFSIM/1 lastReloadTime=";
/// Bytes per generated chunk.
const CHUNK: usize = 256 * 1024;
/// Bytes gathered before each write of an upload to disk.
const WRITE_BUFFER: usize = 1024 * 1024;
/// The shared pseudo-random pool slices are taken from.
const POOL_LEN: usize = 8 * 1024 * 1024;

static POOL: LazyLock<Bytes> = LazyLock::new(|| {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(POOL_LEN);
    while out.len() < POOL_LEN {
        out.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    Bytes::from(out)
});

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 64-bit seed from text (FNV-1a), e.g. an app id and its reload count.
pub fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

enum Kind {
    Synthetic {
        seed: u64,
        size: u64,
        header: [u8; HEADER_LEN],
    },
    File {
        path: PathBuf,
        size: u64,
    },
}

/// The bytes of one app version. Shared (an app and its copies, a replace target, an export).
pub struct ContentData {
    kind: Kind,
    checksum: Mutex<Option<String>>,
}

/// Shared handle to app content.
pub type Content = Arc<ContentData>;

/// App bytes as a stream of chunks.
pub type ByteStream =
    std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>;

impl std::fmt::Debug for ContentData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Synthetic { seed, size, .. } => write!(f, "Synthetic({seed:x}, {size})"),
            Kind::File { path, size } => write!(f, "File({}, {size})", path.display()),
        }
    }
}

impl Drop for ContentData {
    fn drop(&mut self) {
        if let Kind::File { path, .. } = &self.kind {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The header of synthetic content reloaded at `reload_time`.
fn header(reload_time: DateTime<Utc>) -> [u8; HEADER_LEN] {
    let text = format!(
        "{HEADER_TAG}{}",
        reload_time.format("%Y-%m-%dT%H:%M:%S%.3fZ")
    );
    let mut h = [b' '; HEADER_LEN];
    let n = text.len().min(HEADER_LEN - 1);
    h[..n].copy_from_slice(&text.as_bytes()[..n]);
    h[HEADER_LEN - 1] = b'\n';
    h
}

/// The reload time written in a synthetic header, if `first` starts with one.
pub fn reload_time_in_header(first: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(first.get(..HEADER_LEN)?).ok()?;
    let rest = text.strip_prefix(HEADER_TAG)?;
    DateTime::parse_from_rfc3339(rest.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

impl ContentData {
    /// Synthetic content of `size` bytes, determined by `seed` and `reload_time`.
    pub fn synthetic(seed: u64, size: u64, reload_time: DateTime<Utc>) -> Content {
        Arc::new(ContentData {
            kind: Kind::Synthetic {
                seed,
                size,
                header: header(reload_time),
            },
            checksum: Mutex::new(None),
        })
    }

    fn file(path: PathBuf, size: u64, checksum: String) -> Content {
        Arc::new(ContentData {
            kind: Kind::File { path, size },
            checksum: Mutex::new(Some(checksum)),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::Synthetic { size, .. } | Kind::File { size, .. } => *size,
        }
    }

    /// The SHA-256 (hex) when already computed.
    pub fn known_checksum(&self) -> Option<String> {
        self.checksum.lock().ok().and_then(|c| c.clone())
    }

    /// The SHA-256 (hex) of the whole content, computed once (off the async threads).
    pub async fn checksum(self: &Arc<Self>) -> anyhow::Result<String> {
        if let Some(c) = self.known_checksum() {
            return Ok(c);
        }
        let sum = match &self.kind {
            Kind::Synthetic { .. } => {
                let me = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    let mut h = Sha256::new();
                    for i in 0..me.chunk_count(me.size()) {
                        h.update(me.synthetic_chunk(i, me.size()));
                    }
                    hex::encode(h.finalize())
                })
                .await?
            }
            Kind::File { path, .. } => {
                let mut f = tokio::fs::File::open(path).await?;
                let mut h = Sha256::new();
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = f.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                hex::encode(h.finalize())
            }
        };
        if let Ok(mut c) = self.checksum.lock() {
            *c = Some(sum.clone());
        }
        Ok(sum)
    }

    fn chunk_count(&self, len: u64) -> u64 {
        len.div_ceil(CHUNK as u64)
    }

    /// Chunk `i` of the first `len` bytes of synthetic content.
    fn synthetic_chunk(&self, i: u64, len: u64) -> Bytes {
        let Kind::Synthetic { seed, header, .. } = &self.kind else {
            return Bytes::new();
        };
        let start = i * CHUNK as u64;
        let n = (len - start).min(CHUNK as u64) as usize;
        let mut state = seed ^ i.wrapping_mul(0xA24B_AED4_963E_E407);
        let off = (splitmix64(&mut state) % (POOL_LEN - CHUNK) as u64) as usize;
        let slice = POOL.slice(off..off + n);
        if i == 0 {
            let mut b = BytesMut::from(&slice[..]);
            let h = n.min(HEADER_LEN);
            b[..h].copy_from_slice(&header[..h]);
            b.freeze()
        } else {
            slice
        }
    }

    /// The first `len` bytes (all of it when `len >= size`) as a stream of chunks.
    pub fn stream(self: &Arc<Self>, len: u64) -> ByteStream {
        let len = len.min(self.size());
        match &self.kind {
            Kind::Synthetic { .. } => {
                let me = Arc::clone(self);
                let n = self.chunk_count(len);
                Box::pin(futures_util::stream::iter(
                    (0..n).map(move |i| Ok(me.synthetic_chunk(i, len))),
                ))
            }
            Kind::File { path, .. } => {
                let path = path.clone();
                let keep = Arc::clone(self);
                let s = futures_util::stream::once(async move {
                    let f = tokio::fs::File::open(&path).await?;
                    Ok::<_, std::io::Error>(tokio_util::io::ReaderStream::with_capacity(
                        f.take(len),
                        CHUNK,
                    ))
                })
                .map(move |r| {
                    // The stream keeps the file alive (its Drop deletes it) until it ends.
                    let _ = &keep;
                    match r {
                        Ok(s) => s.left_stream(),
                        Err(e) => futures_util::stream::once(async move { Err(e) }).right_stream(),
                    }
                })
                .flatten();
                Box::pin(s)
            }
        }
    }
}

/// Why an upload did not complete.
#[derive(Debug)]
pub enum UploadError {
    /// The body stream failed (client went away, connection dropped).
    Body(String),
    /// Writing the file failed.
    Io(std::io::Error),
    /// The upload was cut on purpose (a fault).
    Cut,
}

/// Streams an upload body into a new file in `dir`, hashing it on the way. `cut_at` stops after
/// at least that many bytes (a fault). Returns the content and the reload time in its header.
pub async fn store_upload<S, E>(
    dir: &Path,
    mut body: S,
    cut_at: Option<u64>,
) -> Result<(Content, Option<DateTime<Utc>>), UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(UploadError::Io)?;
    let path = dir.join(format!("{}.qvf", uuid::Uuid::new_v4()));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(UploadError::Io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut first = Vec::with_capacity(HEADER_LEN);
    // Network chunks are small (TLS records); gather them so each file write (a blocking-pool
    // round trip in tokio) moves a megabyte.
    let mut pending = BytesMut::with_capacity(WRITE_BUFFER);
    let result = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            if first.len() < HEADER_LEN {
                let take = (HEADER_LEN - first.len()).min(chunk.len());
                first.extend_from_slice(&chunk[..take]);
            }
            hasher.update(&chunk);
            pending.extend_from_slice(&chunk);
            if pending.len() >= WRITE_BUFFER {
                file.write_all(&pending).await.map_err(UploadError::Io)?;
                pending.clear();
            }
            size += chunk.len() as u64;
            if let Some(cut) = cut_at
                && size >= cut
            {
                return Err(UploadError::Cut);
            }
        }
        file.write_all(&pending).await.map_err(UploadError::Io)?;
        file.flush().await.map_err(UploadError::Io)?;
        Ok(())
    }
    .await;
    drop(file);
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    let reload = reload_time_in_header(&first);
    Ok((
        ContentData::file(path, size, hex::encode(hasher.finalize())),
        reload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(c: &Content, len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = c.stream(len);
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn synthetic_is_deterministic_and_prefix_stable() {
        let t = Utc::now();
        let a = ContentData::synthetic(seed_of("app-1"), 1_000_000, t);
        let b = ContentData::synthetic(seed_of("app-1"), 1_000_000, t);
        let c = ContentData::synthetic(seed_of("app-2"), 1_000_000, t);
        let ba = collect(&a, u64::MAX).await;
        assert_eq!(ba.len(), 1_000_000);
        assert_eq!(ba, collect(&b, u64::MAX).await);
        assert_ne!(ba, collect(&c, u64::MAX).await);
        assert_eq!(&ba[..1000], &collect(&a, 1000).await[..]);
        assert_eq!(
            a.checksum().await.unwrap(),
            hex::encode(Sha256::digest(&ba))
        );
        let t_ms = DateTime::parse_from_rfc3339(&t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(reload_time_in_header(&ba), Some(t_ms));
    }

    #[tokio::test]
    async fn tiny_content_is_a_truncated_header() {
        let a = ContentData::synthetic(1, 10, Utc::now());
        assert_eq!(collect(&a, u64::MAX).await, b"QVFSIM/1 l".to_vec());
        assert!(
            collect(&ContentData::synthetic(1, 0, Utc::now()), 5)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn upload_round_trip_keeps_bytes_checksum_and_reload_time() {
        let dir = tempfile::tempdir().unwrap();
        let t = Utc::now();
        let src = ContentData::synthetic(7, 700_000, t);
        let (up, reload) = store_upload(dir.path(), src.stream(u64::MAX), None)
            .await
            .unwrap();
        assert_eq!(up.size(), 700_000);
        assert_eq!(up.known_checksum().unwrap(), src.checksum().await.unwrap());
        assert_eq!(collect(&up, u64::MAX).await, collect(&src, u64::MAX).await);
        assert_eq!(
            reload.map(|r| r.timestamp_millis()),
            Some(t.timestamp_millis())
        );
        let cut = store_upload(dir.path(), src.stream(u64::MAX), Some(300_000)).await;
        assert!(matches!(cut, Err(UploadError::Cut)));
        drop(up);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
