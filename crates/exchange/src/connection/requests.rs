//! A connection's requests: each text frame parsed as a Kraken v2 request and answered as Kraken
//! answers (the wording of every refusal is in the parent module's doc): `ping` with a `pong`,
//! `subscribe`/`unsubscribe` of `book` (one response per symbol, in the request's order) and of
//! `instrument`, and an error ack for anything else.
//!
//! What must hold: every request gets its answers, each with the request's `req_id`; a book
//! subscription's ack is written before its snapshot can be (the subscription is active before
//! the market queues the snapshot, and the queue is read only after this request is answered);
//! a request that does not parse is data, answered with an error, never a crash.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Closed, Connection};
use crate::kraken::encode::{self, Ack, AckResult};
use crate::kraken::{Depth, Params, Request};
use crate::market::{BookSink, MarketError};
use crate::stats::bump;
use crate::time::Timestamp;

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    pub(super) async fn on_request(&mut self, text: &str) -> Result<(), Closed> {
        let time_in = Timestamp::now();
        bump(&self.shared.stats.requests);
        let request = match Request::parse(text) {
            Ok(r) => r,
            Err(_) => {
                let (method, req_id, error) = sniff_malformed(text);
                return self
                    .error(method.as_deref(), req_id, error, None, time_in)
                    .await;
            }
        };
        let method = request.method.as_str();
        let req_id = request.req_id;
        match (method, request.params) {
            ("ping", _) => {
                let pong = encode::pong(req_id, time_in, Timestamp::now());
                self.feed(pong.into()).await
            }
            ("subscribe" | "unsubscribe", Some(params)) => match params.channel.as_str() {
                "book" => self.book_request(method, params, req_id, time_in).await,
                "instrument" => {
                    self.instrument_request(method, params, req_id, time_in)
                        .await
                }
                _ => {
                    self.error(Some(method), req_id, "Channel not supported", None, time_in)
                        .await
                }
            },
            ("subscribe" | "unsubscribe", None) => {
                self.error(Some(method), req_id, "Malformed request", None, time_in)
                    .await
            }
            (other, _) => {
                let other = other.to_owned();
                self.error(Some(&other), req_id, "Method not found", None, time_in)
                    .await
            }
        }
    }

    async fn book_request(
        &mut self,
        method: &str,
        params: Params,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        let symbols = match params.symbol {
            Some(s) if !s.is_empty() => s,
            _ => {
                return self
                    .error(Some(method), req_id, "Malformed request", None, time_in)
                    .await;
            }
        };
        let depth = match params.depth {
            None => Depth::default(),
            Some(d) => match Depth::new(d) {
                Some(d) => d,
                None => {
                    for symbol in &symbols {
                        let error = MarketError::DepthNotSupported.to_string();
                        self.error(Some(method), req_id, &error, Some(symbol), time_in)
                            .await?;
                    }
                    return Ok(());
                }
            },
        };
        let snapshot = params.snapshot.unwrap_or(true);
        for symbol in &symbols {
            if method == "subscribe" {
                self.subscribe_book(symbol, depth, snapshot, req_id, time_in)
                    .await?;
            } else {
                self.unsubscribe_book(symbol, req_id, time_in).await?;
            }
        }
        Ok(())
    }

    async fn subscribe_book(
        &mut self,
        symbol: &str,
        depth: Depth,
        snapshot: bool,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        const METHOD: Option<&str> = Some("subscribe");
        if self.shared.config.faults.rejects(symbol) {
            bump(&self.shared.stats.fault_rejected_subscriptions);
            let error = format!("Currency pair not supported {symbol}");
            return self
                .error(METHOD, req_id, &error, Some(symbol), time_in)
                .await;
        }
        if self.books.contains_key(symbol) {
            return self
                .error(METHOD, req_id, "Already subscribed", Some(symbol), time_in)
                .await;
        }
        let sub = self.shared.next_sub();
        let sink = BookSink::new(self.conn, sub, self.queue_tx.clone(), self.overflow.clone());
        // Active before the market queues the snapshot, so nothing of it is skipped.
        self.active.insert(sub);
        match self
            .shared
            .market
            .subscribe_book(symbol, depth, snapshot, sink)
        {
            Ok(()) => {
                self.books.insert(symbol.to_owned(), (sub, depth));
                self.heartbeats = true;
                let ack = encode::ack(&Ack {
                    method: METHOD,
                    req_id,
                    result: Some(AckResult {
                        channel: "book",
                        depth: Some(depth.get()),
                        snapshot: Some(snapshot),
                        symbol: Some(symbol),
                    }),
                    error: None,
                    symbol: None,
                    time_in,
                    time_out: Timestamp::now(),
                });
                self.feed(ack.into()).await
            }
            Err(e) => {
                self.active.remove(&sub);
                self.error(METHOD, req_id, &e.to_string(), Some(symbol), time_in)
                    .await
            }
        }
    }

    async fn unsubscribe_book(
        &mut self,
        symbol: &str,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        const METHOD: Option<&str> = Some("unsubscribe");
        let Some((sub, depth)) = self.books.remove(symbol) else {
            let known = self
                .shared
                .market
                .instruments()
                .iter()
                .any(|p| p.symbol == symbol);
            let error = if known {
                "Subscription Not Found".to_owned()
            } else {
                format!("Currency pair not supported {symbol}")
            };
            return self
                .error(METHOD, req_id, &error, Some(symbol), time_in)
                .await;
        };
        self.active.remove(&sub);
        self.shared.market.unsubscribe_book(symbol, self.conn, sub);
        let ack = encode::ack(&Ack {
            method: METHOD,
            req_id,
            result: Some(AckResult {
                channel: "book",
                depth: Some(depth.get()),
                snapshot: None,
                symbol: Some(symbol),
            }),
            error: None,
            symbol: None,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(ack.into()).await
    }

    async fn instrument_request(
        &mut self,
        method: &str,
        params: Params,
        req_id: Option<u64>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        let subscribe = method == "subscribe";
        if subscribe == self.instrument {
            let error = if subscribe {
                "Already subscribed"
            } else {
                "Subscription Not Found"
            };
            return self.error(Some(method), req_id, error, None, time_in).await;
        }
        self.instrument = subscribe;
        let snapshot = subscribe && params.snapshot.unwrap_or(true);
        let ack = encode::ack(&Ack {
            method: Some(method),
            req_id,
            result: Some(AckResult {
                channel: "instrument",
                depth: None,
                snapshot: subscribe.then_some(snapshot),
                symbol: None,
            }),
            error: None,
            symbol: None,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(ack.into()).await?;
        if subscribe {
            self.heartbeats = true;
        }
        if snapshot {
            let text = self.shared.instrument_snapshot.clone();
            self.feed(text).await?;
        }
        Ok(())
    }

    pub(super) async fn error(
        &mut self,
        method: Option<&str>,
        req_id: Option<u64>,
        error: &str,
        symbol: Option<&str>,
        time_in: Timestamp,
    ) -> Result<(), Closed> {
        bump(&self.shared.stats.error_acks);
        let text = encode::ack(&Ack {
            method,
            req_id,
            result: None,
            error: Some(error),
            symbol,
            time_in,
            time_out: Timestamp::now(),
        });
        self.feed(text.into()).await
    }
}

/// What can be said about a request that is not a valid request object: its method and
/// `req_id` if it has them, and Kraken's error text.
fn sniff_malformed(text: &str) -> (Option<String>, Option<u64>, &'static str) {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else {
        return (None, None, "Malformed request");
    };
    let method = obj
        .get("method")
        .and_then(|m| m.as_str())
        .map(str::to_owned);
    let req_id = obj.get("req_id").and_then(serde_json::Value::as_u64);
    let symbol_is_string = obj
        .get("params")
        .and_then(|p| p.get("symbol"))
        .is_some_and(serde_json::Value::is_string);
    let error = if symbol_is_string {
        "Symbol field must be an array"
    } else {
        "Malformed request"
    };
    (method, req_id, error)
}
