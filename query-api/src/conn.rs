//! Connections the API can cut: a listener whose sockets a handler can close from the
//! server side, even while the server is blocked writing to a client that stopped reading.
//!
//! A live stream whose client falls too far behind is told so and then cut off. Ending the
//! response body is not enough when the client does not read at all: the server never
//! gets to the end of the body. [`Killable`] sockets fail every read and write once
//! [`ConnControl::kill`] is called, so the connection closes at once.

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use futures::task::AtomicWaker;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The server side's handle on one connection.
#[derive(Debug, Default)]
pub struct ConnControl {
    killed: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl ConnControl {
    /// Closes the connection: every further read or write fails.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.reader.wake();
        self.writer.wake();
    }

    fn check(&self) -> io::Result<()> {
        if self.killed.load(Ordering::Acquire) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed by the server",
            ))
        } else {
            Ok(())
        }
    }
}

/// A TCP stream the server can close with its [`ConnControl`].
#[derive(Debug)]
pub struct Killable {
    inner: TcpStream,
    control: Arc<ConnControl>,
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.control.reader.register(cx.waker());
        self.control.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.control.writer.register(cx.waker());
        self.control.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.control.writer.register(cx.waker());
        self.control.check()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.control.writer.register(cx.waker());
        self.control.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's peer address and control, as the handlers see it
/// (`ConnectInfo<Conn>`).
#[derive(Debug, Clone)]
pub struct Conn {
    /// The peer.
    pub peer: SocketAddr,
    /// Closes the connection.
    pub control: Arc<ConnControl>,
}

/// The kernel's send buffer per connection (Linux doubles it). Without a bound, the
/// kernel grows it to megabytes for each of thousands of stream clients, and a client that
/// stopped reading takes that long to be noticed; 256 KiB still moves several MB/s at
/// 100 ms round trips.
pub const SEND_BUFFER: usize = 128 * 1024;

/// A TCP listener handing out [`Killable`] streams.
#[derive(Debug)]
pub struct KillableListener(pub TcpListener);

impl axum::serve::Listener for KillableListener {
    type Io = Killable;
    type Addr = Conn;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, peer)) => {
                    let _ = inner.set_nodelay(true);
                    let _ = socket2::SockRef::from(&inner).set_send_buffer_size(SEND_BUFFER);
                    let control = Arc::new(ConnControl::default());
                    let conn = Conn {
                        peer,
                        control: control.clone(),
                    };
                    return (Killable { inner, control }, conn);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Conn {
            peer: self.0.local_addr()?,
            control: Arc::default(),
        })
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.remote_addr().clone()
    }
}
