//! PyTorch checkpoints (`torch.save`, the zip format since torch 1.6): a bounds-checked zip
//! reader (end of central directory, zip64, central and local headers, entries inside the file
//! and disjoint), then `data.pkl` scanned by [`crate::pickle`] and every tensor checked against
//! the storage file it points into.

// `Problem` is large (it carries the precise location), but it is built once, on the path
// that ends verification; boxing it would only obscure the fields callers read.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::Path;

use crate::pickle;
use crate::problem::{io_problem, read_config, Problem, ProblemKind, Summary, DEFAULT_CONTEXT};

/// Central directory larger than this is refused (a checkpoint has a few thousand entries).
const MAX_CENTRAL_DIR: u64 = 64 << 20;
/// `data.pkl` larger than this is refused (a large model's is a few MB).
const MAX_PICKLE: u64 = 256 << 20;

/// Random access to the bytes of a file (or a buffer, for tests and fuzzing).
pub trait ReadAt {
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| Some(o..o.checked_add(buf.len())?))
            .and_then(|r| self.get(r))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

struct FileAt(std::fs::File, u64);

impl ReadAt for FileAt {
    fn size(&self) -> u64 {
        self.1
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.read_exact_at(buf, offset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    pub name: String,
    /// 0 = stored, 8 = deflate.
    pub method: u16,
    pub compressed_size: u64,
    pub size: u64,
    /// Absolute offset of the entry's data (after its local header).
    pub data_start: u64,
    pub header_offset: u64,
}

fn read(
    src: &(impl ReadAt + ?Sized),
    offset: u64,
    len: u64,
    what: &str,
) -> Result<Vec<u8>, Problem> {
    let end = offset.checked_add(len).filter(|&e| e <= src.size());
    if end.is_none() {
        return Err(Problem::new(
            ProblemKind::Truncated,
            format!(
                "{what} needs bytes {offset}..{} but the file has {}",
                offset.saturating_add(len),
                src.size()
            ),
        )
        .at(offset)
        .expected(format!(
            "a file of at least {} bytes",
            offset.saturating_add(len)
        ))
        .found(format!("{} bytes", src.size())));
    }
    // len <= file size, checked above.
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    src.read_at(offset, &mut buf)
        .map_err(|e| Problem::new(ProblemKind::Io, format!("reading {what}: {e}")).at(offset))?;
    Ok(buf)
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    b.get(i..i + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn bad_zip(msg: String, at: u64) -> Problem {
    Problem::new(ProblemKind::BadZip, msg).at(at)
}

/// Reads and checks a zip's directory.
pub fn read_zip(src: &(impl ReadAt + ?Sized)) -> Result<Vec<ZipEntry>, Problem> {
    let size = src.size();
    if size < 22 {
        return Err(Problem::new(
            ProblemKind::Truncated,
            format!("{size} bytes is too short for a zip (the end record alone is 22)"),
        )
        .at(0)
        .expected("at least 22 bytes")
        .found(format!("{size} bytes")));
    }
    let tail_len = size.min(22 + 65535);
    let tail_start = size - tail_len;
    let tail = read(src, tail_start, tail_len, "end of central directory")?;
    let eocd = (0..=tail.len() - 22)
        .rev()
        .find(|&i| tail.get(i..i + 4) == Some(b"PK\x05\x06"))
        .ok_or_else(|| {
            bad_zip(
                "no end-of-central-directory record: not a zip, or truncated".into(),
                tail_start,
            )
        })?;
    let e = tail.get(eocd..).unwrap_or_default();
    let eocd_at = tail_start + eocd as u64;
    let mut count = u64::from(u16_at(e, 10));
    let mut cd_size = u64::from(u32_at(e, 12));
    let mut cd_offset = u64::from(u32_at(e, 16));
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let loc_at = eocd_at
            .checked_sub(20)
            .ok_or_else(|| bad_zip("zip64 fields set but no zip64 locator".into(), eocd_at))?;
        let loc = read(src, loc_at, 20, "zip64 locator")?;
        if loc.get(..4) != Some(b"PK\x06\x07") {
            return Err(bad_zip("zip64 locator signature missing".into(), loc_at));
        }
        let z_at = u64_at(&loc, 8);
        let z = read(src, z_at, 56, "zip64 end record")?;
        if z.get(..4) != Some(b"PK\x06\x06") {
            return Err(bad_zip("zip64 end record signature missing".into(), z_at));
        }
        count = u64_at(&z, 32);
        cd_size = u64_at(&z, 40);
        cd_offset = u64_at(&z, 48);
    }
    if cd_size > MAX_CENTRAL_DIR || count > cd_size / 46 {
        return Err(bad_zip(
            format!("central directory of {cd_size} bytes with {count} entries is implausible (each entry takes at least 46 bytes; at most {MAX_CENTRAL_DIR} bytes accepted)"),
            eocd_at,
        ));
    }
    let cd = read(src, cd_offset, cd_size, "central directory")?;
    let mut entries = Vec::new();
    let mut p = 0usize;
    for i in 0..count {
        let at = cd_offset + p as u64;
        let h = cd.get(p..).unwrap_or_default();
        if h.len() < 46 || h.get(..4) != Some(b"PK\x01\x02") {
            return Err(bad_zip(
                format!("central directory entry {i} is missing or cut short"),
                at,
            ));
        }
        let method = u16_at(h, 10);
        let mut csize = u64::from(u32_at(h, 20));
        let mut usize_ = u64::from(u32_at(h, 24));
        let n = usize::from(u16_at(h, 28));
        let m = usize::from(u16_at(h, 30));
        let k = usize::from(u16_at(h, 32));
        let mut off = u64::from(u32_at(h, 42));
        let name = h
            .get(46..46 + n)
            .ok_or_else(|| bad_zip(format!("entry {i}'s name runs past the directory"), at))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let mut extra = h.get(46 + n..46 + n + m).ok_or_else(|| {
            bad_zip(
                format!("entry {name:?}'s extra field runs past the directory"),
                at,
            )
        })?;
        while let [a, b, c, d, rest @ ..] = extra {
            let id = u16::from_le_bytes([*a, *b]);
            let len = usize::from(u16::from_le_bytes([*c, *d]));
            let body = rest.get(..len).unwrap_or(rest);
            if id == 1 {
                let mut q = 0;
                for field in [&mut usize_, &mut csize, &mut off] {
                    if *field == 0xFFFF_FFFF {
                        *field = u64_at(body, q);
                        q += 8;
                    }
                }
            }
            extra = rest.get(len..).unwrap_or_default();
        }
        p = p.saturating_add(46 + n + m + k);
        let lh = read(src, off, 30, &format!("local header of {name:?}"))
            .map_err(|e| e.tensor(name.clone()))?;
        if lh.get(..4) != Some(b"PK\x03\x04") {
            return Err(bad_zip(
                format!("entry {name:?}: no local header at byte {off}"),
                off,
            )
            .expected("PK\\x03\\x04")
            .found(format!("{:02x?}", lh.get(..4).unwrap_or_default())));
        }
        let data_start = off + 30 + u64::from(u16_at(&lh, 26)) + u64::from(u16_at(&lh, 28));
        let data_end = data_start.checked_add(csize).filter(|&e| e <= size);
        if data_end.is_none() {
            return Err(Problem::new(
                ProblemKind::EntryOutOfBounds,
                format!(
                    "entry {name:?} needs bytes {data_start}..{} but the file has {size}: truncated",
                    data_start.saturating_add(csize)
                ),
            )
            .tensor(name)
            .at(data_start)
            .expected(format!("a file of at least {} bytes", data_start.saturating_add(csize)))
            .found(format!("{size} bytes")));
        }
        if method == 0 && csize != usize_ {
            return Err(bad_zip(
                format!("stored entry {name:?} has compressed size {csize} but size {usize_}"),
                at,
            ));
        }
        entries.push(ZipEntry {
            name,
            method,
            compressed_size: csize,
            size: usize_,
            data_start,
            header_offset: off,
        });
    }
    let spans = entries
        .iter()
        .map(|e| {
            (
                e.header_offset,
                e.data_start + e.compressed_size,
                e.name.as_str(),
            )
        })
        .collect();
    if let Some(((_, a_end, a), (b_start, _, b))) = crate::span::first_overlap(spans) {
        return Err(Problem::new(
            ProblemKind::Overlap,
            format!(
                "zip entry {b:?} starts at byte {b_start}, inside entry {a:?} (ends at {a_end})"
            ),
        )
        .tensor(b)
        .at(b_start)
        .expected(format!("start at or after {a_end}"))
        .found(b_start));
    }
    Ok(entries)
}

/// What a checked checkpoint holds.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub summary: Summary,
    pub notes: Vec<String>,
    /// Every tensor, checked against its storage, with where the storage's bytes start in the
    /// file (storages are stored uncompressed: a loader can map them).
    pub tensors: Vec<StoredTensor>,
}

/// A tensor of a checked checkpoint and where its storage lies in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTensor {
    pub tensor: pickle::TensorRef,
    /// Absolute offset of the storage's first byte.
    pub storage_start: u64,
}

/// Verifies the torch zip checkpoint at `path`.
pub fn verify_file(path: &Path) -> Result<Checked, Problem> {
    let f = std::fs::File::open(path).map_err(|e| io_problem(path, &e))?;
    let size = f.metadata().map_err(|e| io_problem(path, &e))?.len();
    let src = FileAt(f, size);
    let mut first = [0u8; 2];
    if size >= 2 {
        src.read_at(0, &mut first)
            .map_err(|e| io_problem(path, &e))?;
    }
    if first[0] == 0x80 {
        return Err(Problem::new(
            ProblemKind::Unsupported,
            "this is the legacy (torch < 1.6) pickle checkpoint format, which cannot be checked without running its pickles; re-save it with a current torch or convert it to SafeTensors",
        )
        .at(0));
    }
    let mut out = verify(&src)?;
    let config = path.parent().map(read_config).transpose()?.flatten();
    let s = crate::safetensors::config_summary(
        config.as_ref(),
        DEFAULT_CONTEXT,
        out.summary.estimated_memory_bytes,
    );
    out.summary.architecture = s.architecture;
    out.summary.context_length = s.context_length;
    out.summary.estimated_memory_bytes = s.estimated_memory_bytes;
    out.summary.estimated_for_context = s.estimated_for_context;
    Ok(out)
}

/// Verifies a torch zip checkpoint from any byte source. `summary.estimated_memory_bytes`
/// holds the weight bytes.
pub fn verify(src: &(impl ReadAt + ?Sized)) -> Result<Checked, Problem> {
    let entries = read_zip(src)?;
    let pkls: Vec<&ZipEntry> = entries
        .iter()
        .filter(|e| e.name == "data.pkl" || e.name.ends_with("/data.pkl"))
        .collect();
    let pkl = match pkls.as_slice() {
        [one] => *one,
        _ => {
            return Err(Problem::new(
                ProblemKind::BadCheckpoint,
                format!(
                    "a torch checkpoint has exactly one <name>/data.pkl; this zip has {}",
                    pkls.len()
                ),
            ))
        }
    };
    let prefix = pkl.name.strip_suffix("data.pkl").unwrap_or("");
    if pkl.method != 0 {
        return Err(Problem::new(
            ProblemKind::Unsupported,
            format!(
                "{} is compressed (method {}); torch.save stores it uncompressed",
                pkl.name, pkl.method
            ),
        )
        .tensor(pkl.name.clone())
        .at(pkl.data_start));
    }
    if pkl.size > MAX_PICKLE {
        return Err(Problem::new(
            ProblemKind::BadCheckpoint,
            format!(
                "{} is {} bytes, over the {MAX_PICKLE}-byte limit",
                pkl.name, pkl.size
            ),
        )
        .at(pkl.data_start));
    }
    let data = read(src, pkl.data_start, pkl.size, "data.pkl")?;
    let scan = pickle::scan(&data).map_err(|mut p| {
        p.message = format!("{}: {}", pkl.name, p.message);
        p.offset = p.offset.map(|o| o.saturating_add(pkl.data_start));
        p
    })?;
    let by_name: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let mut params = 0u64;
    let mut weight_bytes = 0u64;
    let mut bytes_by_dtype: HashMap<&str, u64> = HashMap::new();
    let mut storages_seen = std::collections::HashSet::new();
    let mut located = Vec::with_capacity(scan.tensors.len());
    for t in &scan.tensors {
        let file = format!("{prefix}data/{}", t.storage_key);
        let Some(e) = by_name.get(file.as_str()) else {
            return Err(Problem::new(
                ProblemKind::MissingStorage,
                format!(
                    "tensor {} uses storage {file}, which the zip does not have",
                    t.label()
                ),
            )
            .tensor(t.label())
            .expected(format!("zip entry {file}"))
            .found("absent"));
        };
        let need = t.storage_numel.checked_mul(t.element_bytes);
        if need != Some(e.size) {
            return Err(Problem::new(
                ProblemKind::SizeMismatch,
                format!(
                    "storage {file} of tensor {} should be {} x {} bytes ({}) but is {} bytes",
                    t.label(),
                    t.storage_numel,
                    t.element_bytes,
                    need.map_or("overflow".into(), |n| n.to_string()),
                    e.size
                ),
            )
            .tensor(t.label())
            .at(e.data_start)
            .expected(format!("{} bytes", need.unwrap_or(u64::MAX)))
            .found(format!("{} bytes", e.size)));
        }
        let extent = t.extent();
        if extent.is_none_or(|x| x > t.storage_numel) {
            return Err(Problem::new(
                ProblemKind::TensorOutOfBounds,
                format!(
                    "tensor {} ({} {:?}, stride {:?}, offset {}) reads past its storage of {} elements",
                    t.label(), t.dtype, t.shape, t.stride, t.offset, t.storage_numel
                ),
            )
            .tensor(t.label())
            .at(e.data_start)
            .expected(format!("at most {} elements", t.storage_numel))
            .found(extent.map_or("overflow".into(), |x| format!("{x} elements"))));
        }
        if e.method != 0 {
            return Err(Problem::new(
                ProblemKind::Unsupported,
                format!(
                    "storage {file} of tensor {} is compressed (method {}); torch.save stores storages uncompressed",
                    t.label(),
                    e.method
                ),
            )
            .tensor(t.label())
            .at(e.data_start));
        }
        located.push(StoredTensor {
            tensor: t.clone(),
            storage_start: e.data_start,
        });
        params = params.saturating_add(t.n_elements().unwrap_or(0));
        if storages_seen.insert(t.storage_key.as_str()) {
            weight_bytes = weight_bytes.saturating_add(e.size);
            *bytes_by_dtype.entry(t.dtype).or_default() += e.size;
        }
    }
    let quantization = bytes_by_dtype
        .iter()
        .max_by_key(|&(d, b)| (*b, *d))
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let notes = vec![format!(
        "pickle: {} opcodes, imports {}",
        scan.opcodes,
        scan.globals.iter().cloned().collect::<Vec<_>>().join(", ")
    )];
    Ok(Checked {
        summary: Summary {
            parameter_count: params,
            quantization,
            tensor_count: scan.tensors.len() as u64,
            file_size_bytes: src.size(),
            estimated_memory_bytes: weight_bytes,
            ..Default::default()
        },
        notes,
        tensors: located,
    })
}
