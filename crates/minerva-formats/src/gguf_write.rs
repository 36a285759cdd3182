//! Writes GGUF v3 files: metadata and tensor infos in a header built in memory, then each
//! tensor's data, every tensor starting at a multiple of the alignment (32, GGUF's default).
//! Used by `minerva synth` (random weights) and `minerva convert` (a Hugging Face folder).

use std::io::Write;

/// GGUF's default `general.alignment`.
pub const ALIGNMENT: u64 = 32;
pub const GGML_TYPE_F32: u32 = 0;
pub const GGML_TYPE_F16: u32 = 1;
pub const GGML_TYPE_BF16: u32 = 30;
/// `GGML_QNT_VERSION`, which convert_hf_to_gguf.py writes whatever the type.
pub const QUANTIZATION_VERSION: u32 = 2;

/// A metadata value as written (GGUF type ids: u32 4, i32 5, f32 6, bool 7, string 8,
/// array 9).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    StrArray(Vec<String>),
    F32Array(Vec<f32>),
    I32Array(Vec<i32>),
}

/// A tensor as the header describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    /// Row-major shape, outermost first (as PyTorch and safetensors write it); the header
    /// stores it reversed, ne[0] first.
    pub shape: Vec<u64>,
    pub ggml_type: u32,
    /// Bytes of data (before padding).
    pub bytes: u64,
}

pub fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_array<T>(out: &mut Vec<u8>, elem: u32, items: &[T], put: impl Fn(&mut Vec<u8>, &T)) {
    out.extend_from_slice(&9u32.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    for item in items {
        put(out, item);
    }
}

fn put_kv(out: &mut Vec<u8>, key: &str, value: &Value) {
    put_str(out, key);
    match value {
        Value::U32(v) => {
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::F32(v) => {
            out.extend_from_slice(&6u32.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Value::Bool(v) => {
            out.extend_from_slice(&7u32.to_le_bytes());
            out.push(u8::from(*v));
        }
        Value::Str(s) => {
            out.extend_from_slice(&8u32.to_le_bytes());
            put_str(out, s);
        }
        Value::StrArray(items) => put_array(out, 8, items, |o, s| put_str(o, s)),
        Value::F32Array(items) => put_array(out, 6, items, |o, v| o.extend(v.to_le_bytes())),
        Value::I32Array(items) => put_array(out, 5, items, |o, v| o.extend(v.to_le_bytes())),
    }
}

/// The header (magic, version, counts, metadata, tensor infos), zero-padded to the
/// alignment: the data section starts right after it.
pub fn header(metadata: &[(String, Value)], tensors: &[Tensor]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_kv(&mut out, k, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += align(t.bytes);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    out
}

/// Bytes of the whole file.
pub fn file_size(metadata: &[(String, Value)], tensors: &[Tensor]) -> u64 {
    header(metadata, tensors).len() as u64 + tensors.iter().map(|t| align(t.bytes)).sum::<u64>()
}

/// Zero bytes that follow a tensor of `bytes` bytes.
pub fn write_padding(w: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    w.write_all(&vec![0u8; (align(bytes) - bytes) as usize])
}

/// Writes a whole file whose tensors' data `data(i)` returns (one tensor at a time, so only
/// one is in memory); checks each is as long as its info says.
pub fn write(
    w: &mut impl Write,
    metadata: &[(String, Value)],
    tensors: &[Tensor],
    mut data: impl FnMut(usize) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<u64> {
    let head = header(metadata, tensors);
    w.write_all(&head)?;
    let mut written = head.len() as u64;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() as u64 != t.bytes {
            return Err(std::io::Error::other(format!(
                "tensor {} has {} bytes of data, its info says {}",
                t.name,
                bytes.len(),
                t.bytes
            )));
        }
        w.write_all(&bytes)?;
        write_padding(w, t.bytes)?;
        written += align(t.bytes);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{parse_header, MetaValue};

    #[test]
    fn written_files_read_back() {
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::Str("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            ("llama.rope.freq_base".to_string(), Value::F32(10000.0)),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                Value::Bool(true),
            ),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::StrArray(vec!["<s>".into(), "a".into()]),
            ),
            (
                "tokenizer.ggml.scores".to_string(),
                Value::F32Array(vec![0.0, -1.0]),
            ),
            (
                "tokenizer.ggml.token_type".to_string(),
                Value::I32Array(vec![3, 1]),
            ),
        ];
        let tensors = vec![
            Tensor {
                name: "a".into(),
                shape: vec![3],
                ggml_type: GGML_TYPE_F32,
                bytes: 12,
            },
            Tensor {
                name: "b".into(),
                shape: vec![2, 4],
                ggml_type: GGML_TYPE_F16,
                bytes: 16,
            },
        ];
        let mut out = Vec::new();
        let n = write(&mut out, &metadata, &tensors, |i| {
            Ok(vec![i as u8 + 1; tensors[i].bytes as usize])
        })
        .unwrap();
        assert_eq!(n, out.len() as u64);
        assert_eq!(n, file_size(&metadata, &tensors));
        let h = parse_header(&out[..], out.len() as u64).unwrap();
        assert_eq!(h.get_str("general.architecture"), Some("llama"));
        assert_eq!(h.get_u64("llama.block_count"), Some(2));
        assert_eq!(
            h.get("tokenizer.ggml.add_bos_token")
                .and_then(MetaValue::as_bool),
            Some(true)
        );
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[1].shape, vec![4, 2]);
        assert_eq!(h.tensors[1].offset, 32);
        let start = (n - 64) as usize;
        assert_eq!(&out[start..start + 12], &[1u8; 12]);
        assert_eq!(&out[start + 32..start + 48], &[2u8; 16]);
        let mut short = Vec::new();
        let e = write(&mut short, &metadata, &tensors, |_| Ok(vec![0; 4])).unwrap_err();
        assert!(e.to_string().contains("has 4 bytes"), "{e}");
    }
}
