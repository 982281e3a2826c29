//! Mail over SMTP (STARTTLS, TLS or a plain local relay, with a login when
//! configured). Each notification's mail carries a Message-ID made from the
//! notification's id, so the copy a master sends again after dying between
//! the send and recording it is recognisably the same mail.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use shared::config::reporters::{BuildReport, MailConfig};
use shared::config::{MailSecurity, MailSettings};

use super::{Delivery, SendError};

/// The SMTP conversation ends within this.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);

/// The Message-ID of a notification's mail: the same on every attempt.
pub fn message_id(notification_id: i64, from: &Mailbox) -> String {
    format!("<notification.{notification_id}@{}>", from.email.domain())
}

/// A mail to send: its recipients, subject and plain-text body.
pub struct Mail<'a> {
    pub to: &'a [String],
    pub subject: String,
    pub body: String,
}

impl Mail<'_> {
    /// A reporter's mail of one build, its templates rendered.
    pub fn of_build<'a>(config: &'a MailConfig, report: &BuildReport) -> Result<Mail<'a>, SendError> {
        let refused = |problem: String| SendError::Refused { problem };
        Ok(Mail {
            to: &config.to,
            subject: config.subject.render(report).map_err(|error| refused(format!("the subject failed: {error}")))?,
            body: config.body.render(report).map_err(|error| refused(format!("the body failed: {error}")))?,
        })
    }
}

pub async fn send(server: &MailSettings, mail: Mail<'_>, notification_id: i64) -> Result<Delivery, SendError> {
    let refused = |problem: String| SendError::Refused { problem };
    let from: Mailbox =
        server.from.parse().map_err(|error| refused(format!("`{}` is not a mail address: {error}", server.from)))?;
    let id = message_id(notification_id, &from);
    let mut message =
        Message::builder().from(from).subject(mail.subject.replace(['\r', '\n'], " ")).message_id(Some(id.clone()));
    for to in mail.to {
        let to: Mailbox = to.parse().map_err(|error| refused(format!("`{to}` is not a mail address: {error}")))?;
        message = message.to(to);
    }
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(mail.body)
        .map_err(|error| refused(format!("the mail cannot be made: {error}")))?;

    let host = server.smtp_host.as_str();
    let builder = match server.security {
        MailSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
        MailSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        MailSecurity::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
    }
    .map_err(|error| refused(format!("cannot use SMTP server `{host}`: {error}")))?;
    let mut builder = builder.port(server.port()).timeout(Some(SMTP_TIMEOUT));
    if let (Some(username), Some(password)) = (&server.username, &server.password) {
        builder = builder.credentials(Credentials::new(username.clone(), password.expose().to_owned()));
    }
    let transport = builder.build();
    match transport.send(message).await {
        Ok(_) => Ok(Delivery::Told(format!("mail {id} to {}", mail.to.join(", ")))),
        Err(error) => {
            let problem = format!("SMTP server {host}:{}: {error}", server.port());
            // A 5xx answer (a refused login, an unknown recipient) stays
            // refused; anything else (4xx, no connection) may pass later.
            if error.is_permanent() {
                Err(SendError::Refused { problem })
            } else {
                Err(SendError::Retry { problem, after: None })
            }
        }
    }
}
