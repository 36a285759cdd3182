//! A SentencePiece `tokenizer.model` (a protobuf `ModelProto`), read with hand-written prost
//! messages: only the fields Minerva needs, with sentencepiece_model.proto's field numbers.
//! Everything else in the file is skipped by prost as unknown fields.

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<PieceProto>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PieceProto {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    /// `SentencePiece.Type`; absent means NORMAL.
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NormalizerSpec {
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
}

/// `SentencePiece.Type`. llama.cpp's `llama_token_type` uses the same numbers, so GGUF's
/// `tokenizer.ggml.token_type` is this value as is (as convert_hf_to_gguf writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum PieceType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The vocabulary of a SentencePiece model, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// Whether SentencePiece prepends "▁" to the input (normalizer_spec.add_dummy_prefix).
    pub add_dummy_prefix: bool,
}

impl SpModel {
    /// Reads a `tokenizer.model`; the error says what is wrong with it.
    pub fn parse(bytes: &[u8]) -> Result<SpModel, String> {
        let bad = |detail: String| detail;
        let proto = ModelProto::decode(bytes)
            .map_err(|e| bad(format!("not a SentencePiece model: {e}")))?;
        if proto.pieces.is_empty() {
            return Err(bad("SentencePiece model has no pieces".into()));
        }
        let pieces = proto
            .pieces
            .into_iter()
            .enumerate()
            .map(|(id, p)| {
                let kind = match p.kind.unwrap_or(1) {
                    1 => PieceType::Normal,
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    k => return Err(bad(format!("piece {id} has unknown type {k}"))),
                };
                let text = p
                    .piece
                    .ok_or_else(|| bad(format!("piece {id} has no text")))?;
                Ok(Piece {
                    text,
                    score: p.score.unwrap_or(0.0),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SpModel {
            pieces,
            add_dummy_prefix: proto
                .normalizer_spec
                .and_then(|n| n.add_dummy_prefix)
                .unwrap_or(true),
        })
    }
}
