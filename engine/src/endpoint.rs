//! The two ends of a session that is not a file transfer (`sluice bench`, unit sessions such
//! as `sluice db`): a receiving end that serves one proven sender, the sending end that dials
//! it, and both in one process. What differs between those sessions is the work on the link;
//! waiting for the sender, explaining a failure and closing the link are the same and live here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_proto::ticket::Ticket;
use tokio::sync::Notify;

use crate::config::Config;
use crate::control::Control;
use crate::error::{Error, Result};
use crate::transport::{self, Link, Listener};

/// A receiving end that will serve one sender.
#[derive(Debug)]
pub(crate) struct OneSender {
    config: Config,
    rt: tokio::runtime::Runtime,
    listener: Listener,
}

/// A runtime for a receiving end, and its listener bound inside it (see [`Listener::bind`]).
pub(crate) fn listening(
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    config: &Config,
) -> Result<(tokio::runtime::Runtime, Listener)> {
    let rt = transport::runtime()?;
    let listener = {
        let _guard = rt.enter();
        Listener::bind(listen, advertise, config)?
    };
    Ok((rt, listener))
}

impl OneSender {
    /// Listens as a receiver does (see [`Listener::bind`]).
    pub(crate) fn bind(
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        config: Config,
    ) -> Result<Self> {
        let (rt, listener) = listening(listen, advertise, &config)?;
        Ok(Self {
            config,
            rt,
            listener,
        })
    }

    /// The ticket for the sending end.
    pub(crate) fn ticket(&self) -> &Ticket {
        self.listener.ticket()
    }

    /// As `sluice recv`: strays and wrong secrets are refused and the wait goes on (until
    /// `stop` is notified); once a sender is proven nobody else is let in. Runs `work` on its
    /// link and control channel, explains a failure (`resume`: what the user can do about it)
    /// and closes the link, after the sender has closed it when all went well. Returns what
    /// `work` made, the link, and when the sender was proven. `kind`: the session kind this end
    /// takes (`HELLO_KIND` bits); a sender of another kind is refused by name. With `keep`, for
    /// a receiving end that serves senders one after another with the same ticket (`sluice
    /// bench --serve --keep-serving`), others are turned away only while this one is served,
    /// and the listener stays ready for the next.
    pub(crate) fn serve<T, F, Fut>(
        &mut self,
        keep: bool,
        stop: Arc<Notify>,
        kind: u8,
        resume: &'static str,
        work: F,
    ) -> Result<(T, Arc<dyn Link>, Instant)>
    where
        F: FnOnce(Config, [u8; 32], Arc<dyn Link>, Control) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let Self {
            config,
            rt,
            listener,
        } = self;
        rt.block_on(async move {
            let (link, control) = tokio::select! {
                proven = crate::receiver::proven_sender(listener, config, kind) => proven?,
                _ = stop.notified() => {
                    return Err(Error::io(WAITING)(std::io::Error::other(
                        "stopped before a sender came",
                    )))
                }
            };
            let paused = if keep {
                Some(listener.pause())
            } else {
                listener.stop_accepting();
                None
            };
            let secret = listener.ticket().secret;
            let started = Instant::now();
            let idle = config.idle_timeout;
            let result = work(config.clone(), secret, link.clone(), control).await;
            let result = transport::explain(result, &*link, "sender", idle, resume).await;
            match &result {
                Ok(_) => {
                    // The sender closes once it has read the summary (see `receiver`).
                    let wait = idle.max(Duration::from_secs(5));
                    let _ = tokio::time::timeout(wait, link.closed()).await;
                    link.close(0, b"").await;
                }
                Err(e) => link.close(1, e.to_string().as_bytes()).await,
            }
            if let Some(paused) = paused {
                listener.resume(paused);
            }
            result.map(|t| (t, link, started))
        })
    }
}

/// The sending end: connects to the receiver named by `ticket`, runs `work` on the link,
/// explains a failure (`resume`: what the user can do about it) and closes the link.
pub(crate) async fn dial<T, F, Fut>(
    config: &Config,
    ticket: &Ticket,
    resume: &'static str,
    work: F,
) -> Result<(T, Arc<dyn Link>)>
where
    F: FnOnce(Arc<dyn Link>) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let link = transport::connect(config, ticket).await?;
    let result = work(link.clone()).await;
    let result =
        transport::explain(result, &*link, "receiving end", config.idle_timeout, resume).await;
    match &result {
        Ok(_) => link.close(0, b"done").await,
        Err(e) => link.close(1, e.to_string().as_bytes()).await,
    }
    result.map(|t| (t, link))
}

/// What a receiving end stopped before any sender came was doing.
const WAITING: &str = "waiting for a sender";

/// Both ends in this process over loopback: `serve` (given a receiving end on 127.0.0.1 and a
/// stop signal) on a thread of its own, `send` (given its ticket) on this one. A sender that
/// fails before it connects stops the receiving end's wait.
pub(crate) fn pair<T, S>(
    config: &Config,
    name: &str,
    serve: impl FnOnce(OneSender, Arc<Notify>) -> Result<S> + Send + 'static,
    send: impl FnOnce(&Ticket) -> Result<T>,
) -> Result<T>
where
    S: Send + 'static,
{
    let server = OneSender::bind(
        "127.0.0.1:0".parse().expect("literal address"),
        None,
        config.clone(),
    )?;
    let ticket = server.ticket().clone();
    let stop = Arc::new(Notify::new());
    let serving = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(server, stop))
            .map_err(Error::io("starting the receiving end"))?
    };
    let sent = send(&ticket);
    if sent.is_err() {
        stop.notify_one();
    }
    let served = serving.join().unwrap_or_else(|_| {
        Err(Error::io("receiving end")(std::io::Error::other(
            "panicked",
        )))
    });
    match (sent, served) {
        (Ok(s), Ok(_)) => Ok(s),
        // The sender saw the link end because the receiving end failed on its own account (its
        // target refused it, say): that failure is the cause, and says what to fix.
        (Err(Error::Connection { .. }), Err(served))
            if !matches!(
                served,
                Error::Connection { .. } | Error::Io { what: WAITING, .. }
            ) =>
        {
            Err(served)
        }
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}
