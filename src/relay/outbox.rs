//! Bytes waiting to go to one peer, kept as shared buffers (no copy per viewer) and written
//! with vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Queue capacity (in buffers) above which an emptied queue gives its memory back.
const SHRINK_ABOVE: usize = 256;

/// An ordered queue of buffers for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    len: usize,
}

impl Outbox {
    /// Appends a buffer (empty ones are skipped).
    pub fn push(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.len += bytes.len();
            self.queue.push_back(bytes);
        }
    }

    /// Unsent bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when everything was sent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Everything queued, as one buffer (tests and one-off serializations).
    pub fn concat(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.len);
        for b in &self.queue {
            out.extend_from_slice(b);
        }
        Bytes::from(out)
    }

    /// Marks `n` bytes as sent.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        // A joining viewer's backlog makes the queue long once; do not keep that memory for
        // the life of the connection.
        if self.queue.is_empty() && self.queue.capacity() > SHRINK_ABOVE {
            self.queue.shrink_to(MAX_SLICES);
        }
    }

    /// Writes some of the queued bytes with one vectored write; returns how many were taken
    /// (the caller then calls [`Outbox::advance`]). Cancel-safe: nothing is consumed here.
    pub async fn write_some<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
    ) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for (slot, buf) in slices.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(buf);
                n += 1;
            }
            Pin::new(&mut *writer).poll_write_vectored(cx, &slices[..n])
        })
        .await
    }

    /// Writes as much as the socket takes right now without waiting, through `write` (a
    /// non-blocking vectored write such as `try_write_vectored`); returns the bytes written.
    /// Writing as soon as data is queued saves a trip through the connection's event loop.
    pub fn write_now(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (slot, buf) in slices.iter_mut().zip(self.queue.iter()) {
                    *slot = IoSlice::new(buf);
                    n += 1;
                }
                write(&slices[..n])
            };
            match result {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    total += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Writes everything, then empties the queue.
    pub async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        while !self.is_empty() {
            let n = self.write_some(writer).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        writer.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_everything_in_order() {
        let mut outbox = Outbox::default();
        for i in 0..200u32 {
            outbox.push(Bytes::from(i.to_be_bytes().to_vec()));
        }
        outbox.push(Bytes::new());
        assert_eq!(outbox.len(), 800);
        let mut out = Vec::new();
        let n = outbox.write_some(&mut out).await.unwrap();
        assert!(n > 0 && n <= 800);
        outbox.advance(3);
        assert_eq!(outbox.len(), 797);
        let mut rest = Vec::new();
        outbox.write_all(&mut rest).await.unwrap();
        assert!(outbox.is_empty());
        let mut expected: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        expected.drain(..3);
        assert_eq!(rest, expected);
    }
}
