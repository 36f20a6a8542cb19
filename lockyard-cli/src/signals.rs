//! The signals `exec` handles: which, and their streams (see the rules in
//! `supervisor.rs`: 4, forwarding; 6, ignored stays
//! ignored).

#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(not(unix))]
pub(crate) use other::*;

#[cfg(unix)]
mod unix {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    use crate::exit::{self, CliError};

    /// The signals lockyard handles and forwards (rule 4), unless ignored at
    /// start (rule 6). SIGTTIN/SIGTTOU keep their default: they concern
    /// lockyard's own use of the terminal.
    pub(crate) const HANDLED: [i32; 10] = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGWINCH,
        libc::SIGCONT,
        libc::SIGTSTP,
    ];

    /// Signal streams, installed before the lock is awaited so that a
    /// SIGTERM during the wait ends the wait rather than lockyard.
    #[derive(Debug)]
    pub(crate) struct Signals {
        handled: Vec<(i32, Signal)>,
        /// Ignored when lockyard started: COMMAND starts with them ignored.
        pub(crate) ignored: Vec<i32>,
        child: Signal,
    }

    impl Signals {
        pub(crate) fn install() -> Result<Self, CliError> {
            let stream = |sig: i32| {
                signal(SignalKind::from_raw(sig)).map_err(|e| {
                    CliError::new(exit::OS_ERR, format!("cannot handle signal {sig}: {e}"))
                })
            };
            let mut handled = Vec::with_capacity(HANDLED.len());
            let mut ignored = Vec::new();
            for sig in HANDLED.into_iter().chain([libc::SIGCHLD]) {
                if is_ignored(sig) {
                    ignored.push(sig);
                } else if sig != libc::SIGCHLD {
                    handled.push((sig, stream(sig)?));
                }
            }
            // SIGCHLD is always handled: lockyard reaps COMMAND itself.
            let child = stream(libc::SIGCHLD)?;
            Ok(Self {
                handled,
                ignored,
                child,
            })
        }

        /// The next handled signal. Cancel safe.
        async fn recv(&mut self) -> i32 {
            std::future::poll_fn(|cx| {
                for (sig, stream) in &mut self.handled {
                    if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return std::task::Poll::Ready(*sig);
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }

        /// The next handled signal, or `None` for SIGCHLD. Cancel safe.
        pub(crate) async fn next(&mut self) -> Option<i32> {
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(Some(())) = self.child.poll_recv(cx) {
                    return std::task::Poll::Ready(None);
                }
                for (sig, stream) in &mut self.handled {
                    if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return std::task::Poll::Ready(Some(*sig));
                    }
                }
                std::task::Poll::Pending
            })
            .await
        }

        /// While lockyard waits for the lock (no COMMAND yet): the next
        /// signal whose default action ends a process. SIGTSTP stops lockyard
        /// as it would by default; SIGWINCH and SIGCONT are let pass. Cancel
        /// safe.
        pub(crate) async fn recv_fatal(&mut self) -> i32 {
            loop {
                match self.recv().await {
                    libc::SIGWINCH | libc::SIGCONT => {}
                    libc::SIGTSTP => stop_self(),
                    sig => return sig,
                }
            }
        }
    }

    /// Whether `sig`'s disposition is SIG_IGN.
    fn is_ignored(sig: i32) -> bool {
        // rustix does not expose signal dispositions; libc's sigaction does.
        // SAFETY: a null new action only queries; `old` is a valid, zeroed
        // (all-integer and pointer) out parameter.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
        }
    }

    /// Stops lockyard (job control), as SIGTSTP would by default.
    pub(crate) fn stop_self() {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
}

/// Outside Unix there are no signals to forward.
#[cfg(not(unix))]
mod other {
    use crate::exit::CliError;

    #[derive(Debug)]
    pub(crate) struct Signals;

    impl Signals {
        pub(crate) fn install() -> Result<Self, CliError> {
            Ok(Self)
        }

        /// Console Ctrl-C reaches COMMAND directly.
        pub(crate) async fn recv_fatal(&mut self) -> i32 {
            std::future::pending().await
        }
    }
}
