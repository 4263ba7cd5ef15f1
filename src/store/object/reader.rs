//! A blocking `Read` over an async byte stream. A task on the store's
//! runtime pulls the stream and hands chunks through a channel, so the reader
//! gets bytes as they arrive, the transfer does not wait on a busy reader (up
//! to what the channel may hold), and a reader that stops early cancels it.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::errors::io_error;
use crate::store::StoreError;

type Chunk = Result<Bytes, StoreError>;

/// How far the transfer may run ahead of the reader.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ahead {
    /// At most this many chunks.
    Chunks(usize),
    /// The whole stream: only for streams of a bounded, small size.
    Everything,
}

enum Chunks {
    Bounded(mpsc::Receiver<Chunk>),
    Unbounded(mpsc::UnboundedReceiver<Chunk>),
}

impl Chunks {
    fn blocking_recv(&mut self) -> Option<Chunk> {
        match self {
            Chunks::Bounded(rx) => rx.blocking_recv(),
            Chunks::Unbounded(rx) => rx.blocking_recv(),
        }
    }
}

/// Bytes of one ranged read, in order; ends early when the object does.
pub(crate) struct ChannelReader {
    chunks: Chunks,
    current: Bytes,
    /// Keeps the runtime that drives the transfer alive while reading.
    _runtime: Arc<Runtime>,
}

impl ChannelReader {
    /// Start pumping `stream` into the channel. The stream's first error is
    /// the last item delivered; a send fails when the reader was dropped,
    /// which stops the transfer.
    pub(crate) fn spawn(
        runtime: &Arc<Runtime>,
        mut stream: BoxStream<'static, Chunk>,
        ahead: Ahead,
    ) -> Self {
        let chunks = match ahead {
            Ahead::Chunks(capacity) => {
                let (tx, rx) = mpsc::channel(capacity);
                runtime.spawn(async move {
                    while let Some(item) = stream.next().await {
                        let failed = item.is_err();
                        if tx.send(item).await.is_err() || failed {
                            break;
                        }
                    }
                });
                Chunks::Bounded(rx)
            }
            Ahead::Everything => {
                let (tx, rx) = mpsc::unbounded_channel();
                runtime.spawn(async move {
                    while let Some(item) = stream.next().await {
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            break;
                        }
                    }
                });
                Chunks::Unbounded(rx)
            }
        };
        ChannelReader {
            chunks,
            current: Bytes::new(),
            _runtime: Arc::clone(runtime),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(io_error(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Arc<Runtime> {
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn delivers_chunks_in_order_then_the_error() {
        let rt = runtime();
        let items: Vec<Chunk> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"defg")),
            Err(StoreError::Remote {
                location: "s3://b".into(),
                key: "k".into(),
                status: Some(503),
                message: "503 Service Unavailable".into(),
                transient: true,
            }),
            Ok(Bytes::from_static(b"never")),
        ];
        let mut reader =
            ChannelReader::spawn(&rt, futures::stream::iter(items).boxed(), Ahead::Chunks(1));
        let mut small = [0u8; 2];
        assert_eq!(reader.read(&mut small).unwrap(), 2);
        assert_eq!(&small, b"ab");
        let mut rest = Vec::new();
        let err = reader.read_to_end(&mut rest).unwrap_err();
        assert_eq!(rest, b"cdefg");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(err.to_string().contains("503"), "{err}");
    }

    #[test]
    fn ends_cleanly_and_stops_when_dropped() {
        let rt = runtime();
        let alive = Arc::new(());
        let held = Arc::clone(&alive);
        let endless = futures::stream::repeat_with(move || {
            let _ = &held;
            Ok(Bytes::from_static(b"x"))
        })
        .boxed();
        let mut reader = ChannelReader::spawn(&rt, endless, Ahead::Chunks(4));
        let mut five = Vec::new();
        (&mut reader).take(5).read_to_end(&mut five).unwrap();
        assert_eq!(five, b"xxxxx");
        drop(reader);
        // The pump drops the stream once nobody reads.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while Arc::strong_count(&alive) > 1 {
            assert!(std::time::Instant::now() < deadline, "pump kept running");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }

        let finite = futures::stream::iter([Ok(Bytes::from_static(b"end"))]).boxed();
        let mut all = Vec::new();
        ChannelReader::spawn(&rt, finite, Ahead::Everything)
            .read_to_end(&mut all)
            .unwrap();
        assert_eq!(all, b"end");
    }
}
