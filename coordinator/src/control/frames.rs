//! Reading whole client messages from a QUIC stream with a bounded buffer.

use quinn::RecvStream;
use ztmesh_common::wire::{ClientMsg, FrameDecoder, WireError, MAX_CLIENT_FRAME};

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("client closed its stream")]
    Finished,
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads frames; cancel-safe (state lives here, and quinn's `read` loses nothing when dropped),
/// so it can be used in `select!`.
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
}

/// Bytes read per call; the decoder never holds more than one maximal frame plus this.
const CHUNK: usize = 16 * 1024;

impl FrameReader {
    pub fn new(recv: RecvStream) -> Self {
        FrameReader {
            recv,
            decoder: FrameDecoder::new(MAX_CLIENT_FRAME),
        }
    }

    /// The next message.
    pub async fn next(&mut self) -> Result<ClientMsg, ReadError> {
        loop {
            if let Some(msg) = self.decoder.next_msg::<ClientMsg>()? {
                return Ok(msg);
            }
            // Refuse an oversized frame as soon as its length prefix is in, not after buffering it.
            self.decoder.announced_len()?;
            match self.recv.read_chunk(CHUNK, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.pending() > 0 => {
                    return Err(ReadError::Truncated(self.decoder.pending()))
                }
                None => return Err(ReadError::Finished),
            }
        }
    }
}
