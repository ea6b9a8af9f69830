//! Virus scanning: the EICAR test signature, found while the upload streams in
//! ([`EicarScanner`]), and ClamAV's `clamd` over its INSTREAM protocol ([`clamd_scan`]) when one
//! is configured.
//!
//! The built-in scan looks for the signature anywhere in the file (ClamAV only flags it at the
//! start): stricter, and it keeps the EICAR test meaningful for files that must also start with
//! PDF, PNG or JPEG magic bytes.

use std::{net::SocketAddr, path::Path, time::Duration};

use memchr::memmem;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The EICAR anti-virus test file's 68 bytes.
pub(crate) const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// The name a scan reports for the EICAR signature (ClamAV's name for it).
pub(crate) const EICAR_NAME: &str = "Eicar-Test-Signature";

/// Finds [`EICAR`] in a stream of chunks, including where it straddles chunk boundaries.
pub(crate) struct EicarScanner {
    finder: memmem::Finder<'static>,
    /// The last `EICAR.len() - 1` bytes seen: a match crossing into the next chunk starts here.
    tail: Vec<u8>,
    found: bool,
}

impl EicarScanner {
    pub(crate) fn new() -> Self {
        Self { finder: memmem::Finder::new(EICAR), tail: Vec::with_capacity(2 * EICAR.len()), found: false }
    }

    /// Scans the next chunk.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        if self.found || chunk.is_empty() {
            return;
        }
        let keep = EICAR.len() - 1;
        // A match that starts in the tail ends within the first `keep` bytes of this chunk.
        self.tail.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        if self.finder.find(&self.tail).is_some() || self.finder.find(chunk).is_some() {
            self.found = true;
            return;
        }
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    /// Whether the signature was seen.
    pub(crate) fn found(&self) -> bool {
        self.found
    }
}

/// What `clamd` said about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Clean,
    /// The signature's name, e.g. `Eicar-Test-Signature`.
    Infected(String),
}

/// Why `clamd` gave no verdict: the upload must then be refused, never accepted unscanned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClamdError {
    #[error("cannot reach clamd at {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("clamd at {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("talking to clamd failed: {0}")]
    Io(#[from] std::io::Error),
    /// clamd answered with an error, e.g. `INSTREAM size limit exceeded. ERROR`.
    #[error("clamd could not scan the file: {0}")]
    Refused(String),
}

/// How long connecting to clamd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one whole scan (sending 50 MiB and waiting for the verdict) may take.
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per INSTREAM chunk.
const CHUNK: usize = 64 * 1024;
/// The longest reply read from clamd.
const MAX_REPLY: usize = 4096;

/// Streams the file at `path` to clamd at `addr` with `zINSTREAM` and returns its verdict.
///
/// The protocol: the command `zINSTREAM\0`, then chunks each prefixed with its length as a
/// 4-byte big-endian integer, then a zero length; clamd answers with one NUL-terminated line,
/// `stream: OK`, `stream: <name> FOUND` or `<message> ERROR`. clamd refuses streams longer than
/// its `StreamMaxLength` (25 MB by default): set it to at least the upload limit.
pub(crate) async fn clamd_scan(addr: SocketAddr, path: &Path) -> Result<Verdict, ClamdError> {
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ClamdError::Connect { addr, source }),
        Err(_) => return Err(ClamdError::Timeout(addr)),
    };
    match tokio::time::timeout(SCAN_TIMEOUT, instream(&mut stream, path)).await {
        Ok(result) => result,
        Err(_) => Err(ClamdError::Timeout(addr)),
    }
}

async fn instream(stream: &mut TcpStream, path: &Path) -> Result<Verdict, ClamdError> {
    let mut file = tokio::fs::File::open(path).await?;
    let sent = send_file(stream, &mut file).await;
    // clamd closes the connection early when it refuses the stream (too long), after writing
    // why: read its answer even when sending failed.
    let reply = read_reply(stream).await;
    match (sent, reply) {
        (_, Ok(reply)) if !reply.is_empty() => parse_reply(&reply),
        (Err(e), _) => Err(e.into()),
        (Ok(()), Err(e)) => Err(e.into()),
        (Ok(()), Ok(_)) => Err(ClamdError::Refused("clamd closed the connection without a verdict".to_owned())),
    }
}

async fn send_file(stream: &mut TcpStream, file: &mut tokio::fs::File) -> std::io::Result<()> {
    stream.write_all(b"zINSTREAM\0").await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        // n <= CHUNK, far below u32::MAX.
        stream.write_all(&(n as u32).to_be_bytes()).await?;
        stream.write_all(&buf[..n]).await?;
    }
    stream.write_all(&0u32.to_be_bytes()).await?;
    stream.flush().await
}

async fn read_reply(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    while reply.len() < MAX_REPLY {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|&b| b == 0) {
            reply.truncate(end);
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).trim().to_owned())
}

/// Reads clamd's answer line.
fn parse_reply(reply: &str) -> Result<Verdict, ClamdError> {
    let body = reply.strip_prefix("stream:").map(str::trim).unwrap_or(reply);
    if body == "OK" {
        Ok(Verdict::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(Verdict::Infected(name.trim().to_owned()))
    } else {
        Err(ClamdError::Refused(reply.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut scanner = EicarScanner::new();
        for chunk in chunks {
            scanner.feed(chunk);
        }
        scanner.found()
    }

    #[test]
    fn the_signature_is_found_wherever_the_chunks_split_it() {
        let mut file = b"%PDF-1.4\n".to_vec();
        file.extend_from_slice(EICAR);
        file.extend_from_slice(b"\n%%EOF\n");
        // Every split into two chunks, and into three with a one-byte middle chunk.
        for at in 0..=file.len() {
            assert!(scan(&[&file[..at], &file[at..]]), "missed when split at {at}");
        }
        for at in 0..file.len() {
            assert!(scan(&[&file[..at], &file[at..at + 1], &file[at + 1..]]), "missed around {at}");
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = file.chunks(1).collect();
        assert!(scan(&bytes));
        // Chunks of every small size.
        for size in 1..EICAR.len() + 3 {
            let chunks: Vec<&[u8]> = file.chunks(size).collect();
            assert!(scan(&chunks), "missed with chunks of {size}");
        }
    }

    #[test]
    fn near_misses_are_clean() {
        let mut damaged = EICAR.to_vec();
        damaged[40] = b'x';
        assert!(!scan(&[&damaged]));
        let truncated = &EICAR[..EICAR.len() - 1];
        assert!(!scan(&[truncated, b"", truncated]));
        // The two halves far apart.
        let (a, b) = EICAR.split_at(30);
        assert!(!scan(&[a, b"gap", b]));
        assert!(!scan(&[]));
    }

    #[test]
    fn clamd_replies_are_read() {
        assert_eq!(parse_reply("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature FOUND").unwrap(),
            Verdict::Infected("Eicar-Test-Signature".to_owned())
        );
        assert_eq!(
            parse_reply("stream: eicar.com.UNOFFICIAL FOUND").unwrap(),
            Verdict::Infected("eicar.com.UNOFFICIAL".to_owned())
        );
        assert!(matches!(parse_reply("INSTREAM size limit exceeded. ERROR"), Err(ClamdError::Refused(_))));
        assert!(matches!(parse_reply("UNKNOWN COMMAND"), Err(ClamdError::Refused(_))));
    }
}
