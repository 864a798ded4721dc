//! Error e-mail, as the older chatter sent it (`EMAIL_FROM`, `EMAIL_PASSWORD`,
//! `EMAIL_LEVEL`), plus `EMAIL_TO`, `SMTP_HOST`, `SMTP_PORT`, `SMTP_TLS`.
//!
//! A `tracing` layer ([`MailLayer`]) copies every log event at or above
//! `EMAIL_LEVEL` into a bounded channel with `try_send`: logging never waits
//! for SMTP, and when the channel is full the line is counted as dropped. A
//! task ([`Mailer::run`]) collects lines for `EMAIL_BATCH_SECS` after the first
//! one and sends them as one mail, at most `EMAIL_MAX_PER_HOUR` mails in any
//! hour (the lines of a batch over the limit are dropped and counted in the
//! next mail). Mail goes through `lettre`'s async SMTP transport (well kept,
//! rustls, STARTTLS and implicit TLS).
//!
//! **What a mail may contain.** Handlers never log message bodies or tokens
//! (see `telemetry`); on top of that, a field whose name suggests a secret or
//! content (`token`, `secret`, `password`, `authorization`, `body`, `text`,
//! `ticket`, `key`, `cookie`) is replaced by `<redacted>`, and anything in a
//! line that looks like a bearer token or a JWT is too. The layer ignores its
//! own and `lettre`'s events, so a failing SMTP server cannot feed itself.

use crate::config::{Config, SmtpTls};
use crate::telemetry::metric;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Log lines waiting for the next mail, at most.
const QUEUE: usize = 1000;
/// Lines one mail lists; the rest are counted.
const LINES_PER_MAIL: usize = 200;
/// How long one SMTP exchange may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

/// Field names whose values never reach a mail.
const SECRET_NAMES: &[&str] = &[
    "token",
    "secret",
    "password",
    "authorization",
    "auth",
    "body",
    "text",
    "ticket",
    "key",
    "cookie",
];

/// The `tracing` side: formats qualifying events and hands them over.
pub struct MailLayer {
    level: Level,
    lines: mpsc::Sender<String>,
}

/// The sending side, to be run on the runtime.
pub struct Mailer {
    lines: mpsc::Receiver<String>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    batch: Duration,
    max_per_hour: usize,
    process: String,
}

/// The layer and its mailer, or `None` when `EMAIL_TO` is empty (then nothing
/// is added to logging at all). `Err` names the key that is wrong.
pub fn from_config(config: &Config, process: &str) -> Result<Option<(MailLayer, Mailer)>, String> {
    if config.email_to.0.is_empty() {
        return Ok(None);
    }
    let level: Level = config
        .email_level
        .parse()
        .map_err(|_| "EMAIL_LEVEL: not a level".to_owned())?;
    let host = config
        .smtp_host
        .as_deref()
        .ok_or("SMTP_HOST: needed for error e-mail")?;
    let from_address = config
        .email_from
        .as_deref()
        .ok_or("EMAIL_FROM: needed for error e-mail")?;
    let from: Mailbox = from_address
        .parse()
        .map_err(|e| format!("EMAIL_FROM: not an address: {e}"))?;
    let to = config
        .email_to
        .0
        .iter()
        .map(|to| {
            to.parse::<Mailbox>()
                .map_err(|e| format!("EMAIL_TO: {to:?} is not an address: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let builder = match config.smtp_tls {
        SmtpTls::Off => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            host,
        )),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
    }
    .map_err(|e| format!("SMTP_HOST: {e}"))?;
    let port = config.smtp_port.unwrap_or(match config.smtp_tls {
        SmtpTls::Off => 25,
        SmtpTls::Starttls => 587,
        SmtpTls::Tls => 465,
    });
    let mut builder = builder.port(port).timeout(Some(SMTP_TIMEOUT));
    if let Some(password) = config.email_password.as_deref().filter(|p| !p.is_empty()) {
        builder = builder.credentials(Credentials::new(
            from.email.to_string(),
            password.to_owned(),
        ));
    }
    let (sender, lines) = mpsc::channel(QUEUE);
    Ok(Some((
        MailLayer {
            level,
            lines: sender,
        },
        Mailer {
            lines,
            transport: builder.build(),
            from,
            to,
            batch: Duration::from_secs(config.email_batch_secs.max(1)),
            max_per_hour: config.email_max_per_hour as usize,
            process: process.to_owned(),
        },
    )))
}

impl<S: Subscriber> Layer<S> for MailLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // `Level` orders by verbosity: ERROR is the smallest.
        if *meta.level() > self.level
            || meta.target().starts_with("lettre")
            || meta.target() == module_path!()
        {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let text = format!(
            "{} {:>5} {}: {}{}",
            crate::protocol::now_micros()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            meta.level(),
            meta.target(),
            line.message,
            line.fields
        );
        if self.lines.try_send(redact(&text)).is_err() {
            metrics::counter!(metric::ERROR_EMAILS, "outcome" => "dropped").increment(1);
        }
    }
}

/// An event's message and its other fields, secrets redacted by name.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        let name = field.name().to_ascii_lowercase();
        if SECRET_NAMES.iter().any(|secret| name.contains(secret)) {
            let _ = write!(self.fields, " {}=<redacted>", field.name());
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// Replaces what looks like a bearer token or a JWT in free text.
fn redact(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut after_bearer = false;
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let jwt_like = word.contains("eyJ") && word.matches('.').count() >= 2;
        if after_bearer || jwt_like {
            out.push_str("<redacted>");
        } else {
            out.push_str(word);
        }
        after_bearer = word.eq_ignore_ascii_case("bearer");
    }
    out
}

impl Mailer {
    /// Sends batches until `shutdown`; the lines collected by then go out in a
    /// last mail (within the hourly limit).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut sent_at: VecDeque<Instant> = VecDeque::new();
        let mut dropped = 0usize;
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => None,
                line = self.lines.recv() => line,
            };
            let Some(first) = first else { return };
            let mut lines = vec![first];
            let deadline = Instant::now() + self.batch;
            let stopping = loop {
                tokio::select! {
                    () = shutdown.cancelled() => break true,
                    () = tokio::time::sleep_until(deadline) => break false,
                    line = self.lines.recv() => match line {
                        Some(line) => lines.push(line),
                        None => break true,
                    },
                }
            };
            while let Ok(line) = self.lines.try_recv() {
                lines.push(line);
            }
            while sent_at.front().is_some_and(|at| at.elapsed() >= HOUR) {
                sent_at.pop_front();
            }
            if sent_at.len() >= self.max_per_hour {
                dropped += lines.len();
                metrics::counter!(metric::ERROR_EMAILS, "outcome" => "dropped").increment(1);
            } else {
                sent_at.push_back(Instant::now());
                self.send(&lines, dropped).await;
                dropped = 0;
            }
            if stopping {
                return;
            }
        }
    }

    async fn send(&self, lines: &[String], dropped_before: usize) {
        let mut text = format!(
            "{} logged {} line(s) at or above the configured EMAIL_LEVEL:\n\n",
            self.process,
            lines.len()
        );
        for line in lines.iter().take(LINES_PER_MAIL) {
            text.push_str(line);
            text.push('\n');
        }
        if lines.len() > LINES_PER_MAIL {
            let _ = writeln!(text, "… and {} more", lines.len() - LINES_PER_MAIL);
        }
        if dropped_before > 0 {
            let _ = writeln!(
                text,
                "\n{dropped_before} earlier line(s) were not mailed (EMAIL_MAX_PER_HOUR)."
            );
        }
        let mut message = Message::builder()
            .from(self.from.clone())
            .subject(format!("[chatter] {} errors", self.process));
        for to in &self.to {
            message = message.to(to.clone());
        }
        let message = match message.body(text) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "cannot build the error e-mail");
                return;
            }
        };
        match self.transport.send(message).await {
            Ok(_) => metrics::counter!(metric::ERROR_EMAILS, "outcome" => "sent").increment(1),
            Err(error) => {
                metrics::counter!(metric::ERROR_EMAILS, "outcome" => "failed").increment(1);
                // This module's own target: the layer does not mail it.
                tracing::warn!(%error, "cannot send the error e-mail");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_free_text_are_redacted() {
        assert_eq!(
            redact("refused Bearer abc.def.ghi for alice"),
            "refused Bearer <redacted> for alice"
        );
        assert_eq!(
            redact("token eyJhbGciOi.eyJzdWIi.sig seen"),
            "token <redacted> seen"
        );
        assert_eq!(redact("plain words"), "plain words");
    }

    #[test]
    fn off_without_recipients_and_named_errors_otherwise() {
        assert!(matches!(from_config(&Config::default(), "test"), Ok(None)));
        let config = Config {
            email_to: crate::config::StringList(vec!["ops@example.com".into()]),
            smtp_host: Some("smtp.example.com".into()),
            email_from: Some("not an address".into()),
            ..Config::default()
        };
        let error = from_config(&config, "test").err().unwrap_or_default();
        assert!(error.contains("EMAIL_FROM"), "{error}");
    }
}
