//! Stock gRPC clients on the Unix socket. gRPC's C core (Python, Ruby, PHP, C++, C#) sends the
//! percent-encoded socket path as the HTTP/2 `:authority` of a `unix:` target, grpc-java the raw
//! path; h2, under tonic, refuses both as malformed (RST_STREAM PROTOCOL_ERROR) before any
//! service sees the request, and offers no setting to accept them. So each Unix-socket
//! connection passes through this front: it decodes every request header block the client
//! sends, puts `localhost` where the `:authority` is not one h2 accepts (what grpc-go and tonic's
//! own client send on a socket), and re-encodes the block. Every other frame, and everything the
//! server sends, passes through unchanged.
//!
//! The re-encoded blocks use only HPACK's static table and literals that are never indexed, so
//! the server's dynamic table stays empty and in step with this encoder; the client's dynamic
//! table is followed by a full decoder.

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// The bytes every HTTP/2 client sends first.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor): the
/// re-encoded header blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// A request's header block may not grow past this (gRPC metadata is a few hundred bytes; h2's
/// own default limit on a header list is 16 KiB of decoded size).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// What the server reads from: the duplex pipe's buffer.
const PIPE_BYTES: usize = 64 * 1024;

/// Serves `client` (an accepted Unix-socket connection) through the front; returns the end the
/// gRPC server reads and writes.
pub(crate) fn front<S>(client: S) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (server_end, front_end) = tokio::io::duplex(PIPE_BYTES);
    tokio::spawn(async move {
        let (client_read, mut client_write) = tokio::io::split(client);
        let (server_read, server_write) = tokio::io::split(front_end);
        let upstream = rewrite_requests(client_read, server_write);
        let downstream = async move {
            let mut server_read = server_read;
            let r = tokio::io::copy(&mut server_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
            r
        };
        let (up, down) = tokio::join!(upstream, downstream);
        if let Err(e) = up.and(down.map(|_| ())) {
            tracing::debug!(error = %e, "unix-socket connection ended");
        }
    });
    server_end
}

/// Copies the client's frames to the server, re-encoding each header block.
async fn rewrite_requests<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    to.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: let the server answer it as it would.
        tokio::io::copy(&mut from, &mut to).await?;
        return to.shutdown().await;
    }
    let mut decoder = loona_hpack::Decoder::new();
    let mut pending: Option<Pending> = None;
    let mut header = [0u8; 9];
    loop {
        match from.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let mut block = match (kind, pending.take()) {
            (HEADERS, None) => {
                let (priority, fragment) = headers_fragment(flags, &payload)?;
                Pending {
                    stream,
                    flags,
                    priority,
                    block: fragment.to_vec(),
                }
            }
            (CONTINUATION, Some(mut p)) if p.stream == stream => {
                p.block.extend_from_slice(&payload);
                p
            }
            // Only CONTINUATION frames of the same stream may follow an unfinished block.
            (_, Some(_)) | (CONTINUATION, None) => {
                return Err(invalid("a header block interrupted by another frame"))
            }
            _ => {
                to.write_all(&header).await?;
                to.write_all(&payload).await?;
                continue;
            }
        };
        if block.block.len() > MAX_HEADER_BLOCK {
            return Err(invalid("a request header block over 1 MiB"));
        }
        if flags & END_HEADERS == 0 {
            pending = Some(block);
            continue;
        }
        block.block = reencode(&mut decoder, &block.block)?;
        write_block(
            &mut to,
            block.stream,
            block.flags,
            block.priority,
            &block.block,
        )
        .await?;
    }
    to.shutdown().await
}

/// A request header block being gathered from a HEADERS frame and its CONTINUATION frames.
struct Pending {
    stream: u32,
    /// The HEADERS frame's flags (END_STREAM and PRIORITY carry over).
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// A HEADERS payload without its padding and priority fields.
fn headers_fragment(flags: u8, payload: &[u8]) -> std::io::Result<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = body
            .split_first()
            .ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?;
        pad = usize::from(n);
        body = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields: [u8; 5] = body
            .get(..5)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| invalid("a HEADERS frame too short for its priority fields"))?;
        priority = Some(fields);
        body = &body[5..];
    }
    let end = body
        .len()
        .checked_sub(pad)
        .ok_or_else(|| invalid("a HEADERS frame shorter than its padding"))?;
    Ok((priority, &body[..end]))
}

/// Decodes a request's header block and encodes it again, with an authority h2 accepts.
fn reencode(decoder: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut failed = None;
    decoder
        .decode_with_cb(block, |name, value| {
            let value = if name.as_ref() == b":authority" && !is_valid_authority(&value) {
                Cow::Borrowed(&b"localhost"[..])
            } else {
                value
            };
            if let Err(e) = encode_literal(&mut out, &name, &value) {
                failed = Some(e);
            }
        })
        .map_err(|e| {
            invalid(&format!(
                "a request header block HPACK cannot decode: {e:?}"
            ))
        })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A header field as a literal that is never indexed, name and value as plain strings (RFC
/// 7541 §6.2.3): the decoder on the other side adds nothing to its dynamic table.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.push(0x10);
    for s in [name, value] {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out)?;
        out.extend_from_slice(s);
    }
    Ok(())
}

/// Writes a header block as a HEADERS frame and as many CONTINUATION frames as it needs.
async fn write_block<W: AsyncWrite + Unpin>(
    to: &mut W,
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: &[u8],
) -> std::io::Result<()> {
    let first_room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut head_flags = flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        head_flags |= END_HEADERS;
    }
    let mut payload = Vec::with_capacity(first.len() + 5);
    if let Some(p) = priority {
        payload.extend_from_slice(&p);
    }
    payload.extend_from_slice(first);
    write_frame(to, HEADERS, head_flags, stream, &payload).await?;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        let f = if tail.is_empty() { END_HEADERS } else { 0 };
        write_frame(to, CONTINUATION, f, stream, chunk).await?;
        rest = tail;
    }
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    to: &mut W,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = payload.len();
    let mut header = [0u8; 9];
    header[0] = (len >> 16) as u8;
    header[1] = (len >> 8) as u8;
    header[2] = len as u8;
    header[3] = kind;
    header[4] = flags;
    header[5..].copy_from_slice(&stream.to_be_bytes());
    to.write_all(&header).await?;
    to.write_all(payload).await
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request's frames as a client with a dynamic table would send them: the second
    /// request refers to the first one's authority through the dynamic table.
    fn client_bytes(authority: &[u8]) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        let mut frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = payload.len();
            out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(payload);
        };
        frame(0x4, 0, 0, &[]); // SETTINGS
        for stream in [1u32, 3] {
            let block = enc.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/minerva.v1.DaemonService/Status"),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
            ]);
            // Split across a HEADERS and a CONTINUATION frame, with padding on the first.
            let (a, b) = block.split_at(block.len() / 2);
            let mut padded = vec![3u8];
            padded.extend_from_slice(a);
            padded.extend_from_slice(&[0, 0, 0]);
            frame(HEADERS, PADDED, stream, &padded);
            frame(CONTINUATION, END_HEADERS, stream, b);
            frame(0x0, END_STREAM, stream, &[0, 0, 0, 0, 0]); // DATA: an empty message
        }
        out
    }

    /// What the server end reads: each request's decoded headers, and the other frames' kinds.
    async fn through_front(input: Vec<u8>) -> (Vec<Vec<(Vec<u8>, Vec<u8>)>>, Vec<u8>) {
        let (mut out, front_end) = tokio::io::duplex(1 << 20);
        rewrite_requests(&input[..], front_end).await.unwrap();
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).await.unwrap();
        assert_eq!(&bytes[..24], PREFACE);
        let mut dec = loona_hpack::Decoder::new();
        let (mut requests, mut kinds) = (Vec::new(), Vec::new());
        let mut at = 24;
        while at < bytes.len() {
            let len = usize::from(bytes[at]) << 16
                | usize::from(bytes[at + 1]) << 8
                | usize::from(bytes[at + 2]);
            let (kind, flags) = (bytes[at + 3], bytes[at + 4]);
            let payload = &bytes[at + 9..at + 9 + len];
            kinds.push(kind);
            if kind == HEADERS {
                assert_ne!(flags & END_HEADERS, 0, "a small block fits one frame");
                requests.push(dec.decode(payload).unwrap());
            }
            at += 9 + len;
        }
        (requests, kinds)
    }

    fn authority_of(headers: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &headers.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        // What grpcio 1.85 sends for unix:///tmp/mh/d.sock.
        let (requests, kinds) = through_front(client_bytes(b"tmp%2Fmh%2Fd.sock")).await;
        assert_eq!(kinds, [0x4, HEADERS, 0x0, HEADERS, 0x0]);
        assert_eq!(requests.len(), 2);
        for r in &requests {
            assert_eq!(authority_of(r), b"localhost");
            assert!(r.contains(&(
                b":path".to_vec(),
                b"/minerva.v1.DaemonService/Status".to_vec()
            )));
            assert_eq!(r.len(), 5);
        }
    }

    #[tokio::test]
    async fn a_valid_authority_is_left_as_the_client_sent_it() {
        let (requests, _) = through_front(client_bytes(b"localhost:50051")).await;
        assert!(requests
            .iter()
            .all(|r| authority_of(r) == b"localhost:50051"));
        // grpc-java's raw path is no authority either.
        let (requests, _) = through_front(client_bytes(b"/var/run/minervad.sock")).await;
        assert!(requests.iter().all(|r| authority_of(r) == b"localhost"));
    }

    #[tokio::test]
    async fn a_large_block_is_cut_into_continuation_frames() {
        let mut out = Vec::new();
        let block = vec![7u8; MAX_FRAME * 2 + 10];
        write_block(&mut out, 1, END_STREAM, None, &block)
            .await
            .unwrap();
        let kinds: Vec<(u8, u8)> = [0usize, 9 + MAX_FRAME, 18 + 2 * MAX_FRAME]
            .iter()
            .map(|&at| (out[at + 3], out[at + 4]))
            .collect();
        assert_eq!(
            kinds,
            [
                (HEADERS, END_STREAM),
                (CONTINUATION, 0),
                (CONTINUATION, END_HEADERS)
            ]
        );
        assert_eq!(out.len(), 27 + block.len());
    }
}
