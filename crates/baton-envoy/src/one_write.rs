//! Baton's plain gRPC connections (TCP and the Unix socket), written without vectored I/O, so that a Check's reply goes
//! out in one `write` instead of two. h2 copies a DATA frame into its write buffer only below a
//! threshold (256 bytes on a stream that writes vectored, 1 KiB on one that does not); a longer
//! frame is chained and must be written before the trailers can be buffered. Baton's reply carries
//! the exchanged token, so on a vectored stream it took two system calls per Check (and often two
//! reads in Envoy); BENCHMARKS.md, "The Check hop", has the counts.
//!
//! It owns only the stream type. It must never change a byte written, nor how a connection is
//! accepted: it forwards every call to the stream it wraps, and reports the same peer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A stream that does not offer vectored writes (the default of `AsyncWrite`).
#[derive(Debug)]
pub(crate) struct OneWrite<S>(pub(crate) S);

impl<S: AsyncRead + Unpin> AsyncRead for OneWrite<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OneWrite<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for OneWrite<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn forwards_bytes_both_ways_and_the_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"ping").await.expect("write");
            let mut back = [0u8; 4];
            s.read_exact(&mut back).await.expect("read");
            back
        });
        let (stream, peer) = listener.accept().await.expect("accept");
        let mut stream = OneWrite(stream);
        assert!(!stream.is_write_vectored());
        assert_eq!(stream.connect_info().remote_addr(), Some(peer));
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        let bufs = [io::IoSlice::new(b"po"), io::IoSlice::new(b"ng")];
        let mut written = 0;
        while written < 4 {
            written += stream.write_vectored(&bufs[written / 2..]).await.expect("write");
        }
        assert_eq!(&client.await.expect("client"), b"pong");
    }
}
