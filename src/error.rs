//! Typed request errors and the one place that maps them to HTTP statuses, bodies and WebSocket
//! close codes (docs/protocol.md#errors-and-close-codes).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// 4010: subscriber without a valid channel.
    WrongChannelId,
    /// 4012: untrusted publish without a validly signed `priv:pub` item.
    PublicChannelRequired,
    /// 4013: empty or undecodable publish.
    WrongRequestData,
    /// 4014: a command an untrusted caller may not use (`serverStats`, registration).
    CommandNotAllowed,
    /// 4015: unknown or unsupported command on the trusted route.
    WrongRequestCommand,
    /// 4016: more messages in one request than allowed.
    TooManyMessages,
    /// 4017: no channels.
    NoChannels,
    /// 4018: more channels than allowed.
    TooManyChannels,
    /// 4019: malformed channel item in a publish.
    InvalidChannelId,
    /// 4020: an untrusted receiver or stats id marked private.
    PrivateChannelNotAllowed,
    /// 4021: an untrusted receiver whose public signature is missing or wrong.
    InvalidChannelSignature,
    /// 4026: the `signature` query does not match.
    WrongSignature,
    /// 4029: connection cap per private channel reached; this connection was the oldest.
    TooManyConnections,
    /// 4030: malformed channel stats request.
    WrongChannelStatsRequest,
    /// 503: the message store cannot take the publish (Redis down or its queue full);
    /// nothing of the request was published.
    StoreUnavailable,
    /// 503: shutdown has begun (docs/restart.md); nothing of the request was published and
    /// the next process takes the retry.
    ShuttingDown,
    /// HTTP-level failures (no Bitrix code).
    Http(HttpError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// 400: unparsable request, chunked or conflicting lengths (smuggling guard).
    Malformed,
    /// 404: unknown route, or a trusted route on the public listener.
    NotFound,
    /// 408: the head or body did not arrive within the header timeout.
    Timeout,
    /// 413: body over the payload limit.
    PayloadTooLarge,
    /// 431: head over the header size limit.
    HeaderTooLarge,
    /// 405: a method a route does not serve.
    MethodNotAllowed,
}

/// WebSocket close codes that are not Bitrix codes.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN: u16 = 1013;
}

impl ApiError {
    /// The Bitrix code, if the error has one.
    pub fn code(self) -> Option<u16> {
        Some(match self {
            ApiError::WrongChannelId => 4010,
            ApiError::PublicChannelRequired => 4012,
            ApiError::WrongRequestData => 4013,
            ApiError::CommandNotAllowed => 4014,
            ApiError::WrongRequestCommand => 4015,
            ApiError::TooManyMessages => 4016,
            ApiError::NoChannels => 4017,
            ApiError::TooManyChannels => 4018,
            ApiError::InvalidChannelId => 4019,
            ApiError::PrivateChannelNotAllowed => 4020,
            ApiError::InvalidChannelSignature => 4021,
            ApiError::WrongSignature => 4026,
            ApiError::TooManyConnections => 4029,
            ApiError::WrongChannelStatsRequest => 4030,
            ApiError::Http(_) | ApiError::StoreUnavailable | ApiError::ShuttingDown => return None,
        })
    }

    fn text(self) -> &'static str {
        match self {
            ApiError::WrongChannelId => "Wrong Channel Id.",
            ApiError::PublicChannelRequired => "Public Channel Id is Required.",
            ApiError::WrongRequestData => "Wrong Request Data.",
            ApiError::CommandNotAllowed => "Request command is not allowed.",
            ApiError::WrongRequestCommand => "Wrong Request Command.",
            ApiError::TooManyMessages => "Request exceeded the maximum number of messages.",
            ApiError::NoChannels => "No channels found.",
            ApiError::TooManyChannels => "Request exceeded the maximum number of channels.",
            ApiError::InvalidChannelId => "Request has an invalid channel id.",
            ApiError::PrivateChannelNotAllowed => "Private channel is not allowed.",
            ApiError::InvalidChannelSignature => "Channel has an invalid signature.",
            ApiError::WrongSignature => "Wrong request signature.",
            ApiError::TooManyConnections => "Too many connections",
            ApiError::WrongChannelStatsRequest => "Wrong ChannelStats Request.",
            ApiError::StoreUnavailable => {
                "503: Message store unavailable; nothing was published. Retry later."
            }
            ApiError::ShuttingDown => "503: Server shutting down; nothing was published. Retry.",
            ApiError::Http(HttpError::Malformed) => "Bad Request",
            ApiError::Http(HttpError::NotFound) => "Not Found",
            ApiError::Http(HttpError::Timeout) => "Request Timeout",
            ApiError::Http(HttpError::PayloadTooLarge) => "Payload Too Large",
            ApiError::Http(HttpError::HeaderTooLarge) => "Request Header Fields Too Large",
            ApiError::Http(HttpError::MethodNotAllowed) => "Method Not Allowed",
        }
    }

    /// HTTP status: 4029 → 429, other Bitrix codes → 400 (docs/protocol.md#errors-and-close-codes).
    pub fn status(self) -> u16 {
        match self {
            ApiError::TooManyConnections => 429,
            ApiError::StoreUnavailable | ApiError::ShuttingDown => 503,
            ApiError::Http(h) => match h {
                HttpError::Malformed => 400,
                HttpError::NotFound => 404,
                HttpError::Timeout => 408,
                HttpError::PayloadTooLarge => 413,
                HttpError::HeaderTooLarge => 431,
                HttpError::MethodNotAllowed => 405,
            },
            _ => 400,
        }
    }

    /// Close code for a WebSocket that fails with this error.
    pub fn ws_close_code(self) -> u16 {
        match self {
            ApiError::Http(HttpError::PayloadTooLarge) => close::TOO_BIG,
            ApiError::Http(_) => close::PROTOCOL,
            ApiError::StoreUnavailable => close::TRY_AGAIN,
            ApiError::ShuttingDown => close::GOING_AWAY,
            other => other.code().unwrap_or(close::PROTOCOL),
        }
    }

    /// HTTP body: `"<code>: <text>"`; the 413 body stays empty as the references send it.
    pub fn http_body(self) -> String {
        match self {
            ApiError::Http(HttpError::PayloadTooLarge) => String::new(),
            _ => self.to_string(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{code}: {}", self.text()),
            None => f.write_str(self.text()),
        }
    }
}

impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        ApiError::Http(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        assert_eq!(
            ApiError::WrongChannelId.to_string(),
            "4010: Wrong Channel Id."
        );
        assert_eq!(ApiError::WrongChannelId.status(), 400);
        assert_eq!(ApiError::WrongChannelId.ws_close_code(), 4010);
        assert_eq!(ApiError::TooManyConnections.status(), 429);
        assert_eq!(
            ApiError::TooManyConnections.http_body(),
            "4029: Too many connections"
        );
        let big = ApiError::from(HttpError::PayloadTooLarge);
        assert_eq!((big.status(), big.ws_close_code()), (413, 1009));
        assert_eq!(big.http_body(), "");
        assert_eq!(ApiError::from(HttpError::HeaderTooLarge).status(), 431);
        let down = ApiError::ShuttingDown;
        assert_eq!(
            (down.status(), down.ws_close_code(), down.code()),
            (503, 1001, None)
        );
        assert!(down.http_body().contains("nothing was published"));
        for (e, want) in [
            (
                ApiError::PublicChannelRequired,
                "4012: Public Channel Id is Required.",
            ),
            (
                ApiError::CommandNotAllowed,
                "4014: Request command is not allowed.",
            ),
            (
                ApiError::WrongRequestCommand,
                "4015: Wrong Request Command.",
            ),
            (
                ApiError::TooManyMessages,
                "4016: Request exceeded the maximum number of messages.",
            ),
            (
                ApiError::PrivateChannelNotAllowed,
                "4020: Private channel is not allowed.",
            ),
            (
                ApiError::InvalidChannelSignature,
                "4021: Channel has an invalid signature.",
            ),
            (
                ApiError::WrongChannelStatsRequest,
                "4030: Wrong ChannelStats Request.",
            ),
        ] {
            assert_eq!(e.to_string(), want);
            assert_eq!(e.status(), 400);
            assert_eq!(Some(e.ws_close_code()), e.code());
        }
    }
}
