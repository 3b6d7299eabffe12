//! A PostgreSQL replication connection over tokio, speaking the wire protocol
//! through `postgres-protocol`: start-up with `replication=database`,
//! trust/cleartext/md5/SCRAM-SHA-256 authentication, simple queries (for
//! `IDENTIFY_SYSTEM` and slot creation) and the CopyBoth stream of
//! `START_REPLICATION`. TLS is not supported (loopback / private networks).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{
    md5_hash,
    sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256},
};
use postgres_protocol::message::{backend::Message, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::lsn::Lsn;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("connection to PostgreSQL failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("PostgreSQL closed the replication connection")]
    Closed,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("PostgreSQL error {code}: {message}")]
    Server { code: String, message: String },
    #[error("unexpected replication protocol message: {0}")]
    Protocol(String),
    #[error("{command} got no answer within {after:?} (cancelled)")]
    Timeout {
        command: &'static str,
        after: Duration,
    },
    #[error(
        "the server sent nothing for {0:?}, not even a keepalive when asked: the connection \
         is presumed dead (replication.receive_timeout)"
    )]
    Silent(Duration),
}

impl ReplicationError {
    /// The SQLSTATE of a server error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

type Result<T, E = ReplicationError> = std::result::Result<T, E>;

/// Where and as whom to connect, taken from a `postgres://` URL.
#[derive(Clone)]
pub struct ConnectParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Vec<u8>>,
    pub dbname: String,
    pub application_name: String,
}

impl ConnectParams {
    pub fn from_url(url: &str, application_name: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ReplicationError::InvalidUrl(e.to_string()))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(_) => {
                return Err(ReplicationError::InvalidUrl(
                    "only TCP hosts are supported".into(),
                ));
            }
            None => "localhost".into(),
        };
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::InvalidUrl("no user".into()))?
            .to_owned();
        Ok(Self {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            dbname: config.get_dbname().unwrap_or(&user).to_owned(),
            user,
            password: config.get_password().map(<[u8]>::to_vec),
            application_name: application_name.to_owned(),
        })
    }
}

/// A message of the replication stream.
#[derive(Debug)]
pub enum StreamMessage {
    /// WAL data: one pgoutput message.
    XLogData { wal_end: Lsn, data: Bytes },
    /// The server's heartbeat; `wal_end` is its current send position.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A connected, authenticated replication session (before streaming).
pub struct ReplicationConnection {
    stream: TcpStream,
    read: BytesMut,
    write: BytesMut,
    cancel: Option<CancelKey>,
}

/// What a CancelRequest for one backend needs (from BackendKeyData).
#[derive(Debug, Clone)]
pub struct CancelKey {
    host: String,
    port: u16,
    process_id: i32,
    secret_key: i32,
}

impl CancelKey {
    /// The backend's process id (as `pg_stat_activity.pid` shows it).
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    /// Asks the server to cancel whatever command the backend runs, over a
    /// connection of its own (the protocol's CancelRequest). Best effort:
    /// errors are logged, and it gives up after `timeout`.
    pub async fn cancel(&self, timeout: Duration) {
        let request = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let mut buf = BytesMut::with_capacity(16);
            frontend::cancel_request(self.process_id, self.secret_key, &mut buf);
            stream.write_all(&buf).await?;
            // The server closes the connection once it handled the request.
            let mut rest = [0u8; 1];
            let _ = stream.read(&mut rest).await;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(timeout, request).await {
            Ok(Ok(())) => tracing::debug!(pid = self.process_id, "cancel request sent"),
            Ok(Err(e)) => {
                tracing::warn!(pid = self.process_id, error = %e, "cancel request failed")
            }
            Err(_) => tracing::warn!(pid = self.process_id, "cancel request timed out"),
        }
    }
}

/// How long a cancel request may take (it is a connect and 16 bytes).
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

/// The deadline of a replication command when the caller names none.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl ReplicationConnection {
    /// Connects and authenticates within `timeout`.
    pub async fn connect(params: &ConnectParams, timeout: Duration) -> Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(params))
            .await
            .map_err(|_| {
                ReplicationError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
    }

    async fn connect_inner(params: &ConnectParams) -> Result<Self> {
        let stream = TcpStream::connect((params.host.as_str(), params.port)).await?;
        stream.set_nodelay(true)?;
        set_keepalive(&stream)?;
        let mut conn = Self {
            stream,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::with_capacity(1024),
            cancel: None,
        };
        // Text output of timestamps must be unambiguous for the decoder.
        let parameters = [
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("replication", "database"),
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
        ];
        frontend::startup_message(parameters, &mut conn.write)?;
        conn.flush().await?;
        conn.authenticate(params).await?;
        conn.wait_ready(params).await?;
        Ok(conn)
    }

    /// `TCP_USER_TIMEOUT`: the kernel drops the connection when data it sent
    /// (status updates) stays unacknowledged this long, e.g. after the
    /// server's host vanished.
    pub fn set_user_timeout(&self, timeout: Duration) -> Result<()> {
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        set_option(
            &self.stream,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            millis,
        )?;
        Ok(())
    }

    /// What cancels this connection's running command (from another task,
    /// e.g. at shutdown); `None` if the server sent no key.
    pub fn cancel_key(&self) -> Option<CancelKey> {
        self.cancel.clone()
    }

    async fn authenticate(&mut self, params: &ConnectParams) -> Result<()> {
        let password = || {
            params
                .password
                .as_deref()
                .ok_or_else(|| ReplicationError::Auth("the server asks for a password".into()))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut self.write)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(params.user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut supported = false;
                    while let Some(mechanism) = mechanisms.next()? {
                        supported |= mechanism == SCRAM_SHA_256;
                    }
                    if !supported {
                        return Err(ReplicationError::Auth("no supported SASL mechanism".into()));
                    }
                    let state = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        SCRAM_SHA_256,
                        state.message(),
                        &mut self.write,
                    )?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before SASL start".into())
                    })?;
                    state
                        .update(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(state.message(), &mut self.write)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before SASL start".into())
                    })?;
                    state
                        .finish(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {
                    return Err(ReplicationError::Auth(
                        "unsupported authentication method".into(),
                    ));
                }
            }
            self.flush().await?;
        }
    }

    /// Keeps the cancel key, skips parameter statuses, up to the first
    /// ReadyForQuery.
    async fn wait_ready(&mut self, params: &ConnectParams) -> Result<()> {
        loop {
            match self.read_message().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::BackendKeyData(body) => {
                    self.cancel = Some(CancelKey {
                        host: params.host.clone(),
                        port: params.port,
                        process_id: body.process_id(),
                        secret_key: body.secret_key(),
                    });
                }
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {}
            }
        }
    }

    /// [`simple_query`](Self::simple_query) with a deadline: past it the
    /// server is asked to cancel the command, and the connection must be
    /// dropped (its protocol state is unknown).
    async fn query_within(
        &mut self,
        command: &'static str,
        sql: &str,
        timeout: Duration,
    ) -> Result<Vec<Vec<Option<String>>>> {
        match tokio::time::timeout(timeout, self.simple_query(sql)).await {
            Ok(rows) => rows,
            Err(_) => {
                self.cancel_running().await;
                Err(ReplicationError::Timeout {
                    command,
                    after: timeout,
                })
            }
        }
    }

    async fn cancel_running(&self) {
        if let Some(key) = &self.cancel {
            key.cancel(CANCEL_TIMEOUT).await;
        }
    }

    /// Runs one simple-protocol statement; returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::DataRow(body) => rows.push(data_row(&body)?),
                Message::ErrorResponse(body) => error = Some(server_error(body.fields())),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        error.map_or(Ok(rows), Err)
    }

    /// `IDENTIFY_SYSTEM`: the server's current WAL flush position.
    pub async fn identify_system(&mut self, timeout: Duration) -> Result<Lsn> {
        let rows = self
            .query_within("IDENTIFY_SYSTEM", "IDENTIFY_SYSTEM", timeout)
            .await?;
        rows.first()
            .and_then(|row| row.get(2).cloned().flatten())
            .and_then(|xlogpos| xlogpos.parse().ok())
            .ok_or_else(|| ReplicationError::Protocol("IDENTIFY_SYSTEM returned no xlogpos".into()))
    }

    /// Creates a logical slot for `pgoutput` without exporting a snapshot;
    /// returns its consistent point (where its stream starts). PostgreSQL
    /// answers only once every transaction (with an xid) that was open in
    /// the cluster when it started has ended; past `timeout` the creation
    /// is cancelled (the half-made slot goes with it).
    pub async fn create_slot(&mut self, slot: &str, timeout: Duration) -> Result<Lsn> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(slot)
        );
        let rows = self
            .query_within("CREATE_REPLICATION_SLOT", &sql, timeout)
            .await?;
        rows.first()
            .and_then(|row| row.get(1).cloned().flatten())
            .and_then(|point| point.parse().ok())
            .ok_or_else(|| {
                ReplicationError::Protocol(
                    "CREATE_REPLICATION_SLOT returned no consistent point".into(),
                )
            })
    }

    /// Starts streaming from the slot's confirmed position, with
    /// [`DEFAULT_COMMAND_TIMEOUT`] for the answer and the status updates.
    pub async fn start_replication(
        self,
        slot: &str,
        publication: &str,
    ) -> Result<ReplicationStream> {
        self.start_replication_within(slot, publication, DEFAULT_COMMAND_TIMEOUT)
            .await
    }

    /// Starts streaming from the slot's confirmed position; `timeout` bounds
    /// the server's answer and, later, every write of a status update.
    pub async fn start_replication_within(
        mut self,
        slot: &str,
        publication: &str,
        timeout: Duration,
    ) -> Result<ReplicationStream> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names {})",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        match tokio::time::timeout(timeout, self.start_copy_both(&sql)).await {
            Ok(Ok(())) => Ok(ReplicationStream {
                conn: self,
                write_timeout: timeout,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.cancel_running().await;
                Err(ReplicationError::Timeout {
                    command: "START_REPLICATION",
                    after: timeout,
                })
            }
        }
    }

    async fn start_copy_both(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        loop {
            let (tag, frame) = self.read_frame().await?;
            // postgres-protocol does not know CopyBothResponse ('W').
            if tag == b'W' {
                return Ok(());
            }
            match parse_message(frame)? {
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                Message::NoticeResponse(_) => {}
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Reads one whole frame: its tag and the complete message bytes.
    async fn read_frame(&mut self) -> Result<(u8, Bytes)> {
        loop {
            if self.read.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
                if len < 4 {
                    return Err(ReplicationError::Protocol("frame length below 4".into()));
                }
                let total = len as usize + 1;
                if self.read.len() >= total {
                    let frame = self.read.split_to(total).freeze();
                    return Ok((frame[0], frame));
                }
                self.read.reserve(total - self.read.len());
            }
            if self.stream.read_buf(&mut self.read).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    async fn read_message(&mut self) -> Result<Message> {
        let (_, frame) = self.read_frame().await?;
        parse_message(frame)
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream.write_all(&self.write).await?;
        self.write.clear();
        Ok(())
    }
}

/// The CopyBoth phase of a replication connection.
pub struct ReplicationStream {
    conn: ReplicationConnection,
    /// Deadline of writing a status update (a socket whose peer stopped
    /// reading fills up and would block the session).
    write_timeout: Duration,
}

impl ReplicationStream {
    /// The next XLogData or keepalive. Cancel-safe: a partly read frame stays
    /// buffered for the next call.
    pub async fn next(&mut self) -> Result<StreamMessage> {
        loop {
            let (tag, mut frame) = self.conn.read_frame().await?;
            match tag {
                b'd' => {
                    frame.advance(5);
                    if let Some(message) = parse_copy_data(frame)? {
                        return Ok(message);
                    }
                }
                b'c' => return Err(ReplicationError::Closed),
                _ => match parse_message(frame)? {
                    Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                    Message::NoticeResponse(_) | Message::ParameterStatus(_) => {}
                    other => return Err(unexpected(&other)),
                },
            }
        }
    }

    /// Sends a standby status update: everything up to `confirmed` has been
    /// durably handled (written, flushed and applied).
    pub async fn send_status(&mut self, confirmed: Lsn, reply_requested: bool) -> Result<()> {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(confirmed.0);
        body.put_u64(confirmed.0);
        body.put_u64(confirmed.0);
        body.put_i64(pg_now());
        body.put_u8(u8::from(reply_requested));
        frontend::CopyData::new(body.freeze())?.write(&mut self.conn.write);
        tokio::time::timeout(self.write_timeout, self.conn.flush())
            .await
            .map_err(|_| ReplicationError::Timeout {
                command: "standby status update",
                after: self.write_timeout,
            })?
    }

    /// Ends the stream politely (CopyDone, Terminate); errors are irrelevant
    /// because the connection is going away anyway.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.conn.write);
        frontend::terminate(&mut self.conn.write);
        let polite = async {
            let _ = self.conn.flush().await;
            let _ = self.conn.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(self.write_timeout, polite).await;
    }
}

/// TCP keepalive probes after 30 s without traffic, every 10 s, 3 unanswered
/// ones close the socket: a peer that vanished while the session was idle in
/// both directions is noticed (status updates keep it busy otherwise, where
/// `TCP_USER_TIMEOUT` and the stream's receive timeout apply).
fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    set_option(stream, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30)?;
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10)?;
    set_option(stream, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)
}

fn set_option(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a socket this stream owns, with a c_int value
    // of the size passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn parse_copy_data(mut data: Bytes) -> Result<Option<StreamMessage>> {
    let truncated = || ReplicationError::Protocol("truncated CopyData".into());
    if data.is_empty() {
        return Err(truncated());
    }
    match data.get_u8() {
        b'w' => {
            if data.remaining() < 24 {
                return Err(truncated());
            }
            let _start = data.get_u64();
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            Ok(Some(StreamMessage::XLogData { wal_end, data }))
        }
        b'k' => {
            if data.remaining() < 17 {
                return Err(truncated());
            }
            let wal_end = Lsn(data.get_u64());
            let _send_time = data.get_i64();
            let reply_requested = data.get_u8() == 1;
            Ok(Some(StreamMessage::Keepalive {
                wal_end,
                reply_requested,
            }))
        }
        _ => Ok(None),
    }
}

fn parse_message(frame: Bytes) -> Result<Message> {
    let mut buf = BytesMut::from(&frame[..]);
    Message::parse(&mut buf)?.ok_or_else(|| ReplicationError::Protocol("incomplete message".into()))
}

fn data_row(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>> {
    let buffer = body.buffer();
    body.ranges()
        .map(|range| Ok(range.map(|r| String::from_utf8_lossy(&buffer[r]).into_owned())))
        .collect()
        .map_err(ReplicationError::Io)
}

fn server_error(
    mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> ReplicationError {
    let mut code = String::new();
    let mut message = String::new();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    ReplicationError::Server { code, message }
}

fn unexpected(message: &Message) -> ReplicationError {
    let name = match message {
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::CommandComplete(_) => "CommandComplete",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        _ => "other",
    };
    ReplicationError::Protocol(name.into())
}

/// The current time in PostgreSQL's epoch (microseconds since 2000-01-01).
pub fn pg_now() -> i64 {
    let unix_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    unix_micros - PG_EPOCH_OFFSET_MICROS
}

pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

pub fn quote_literal(literal: &str) -> String {
    format!("'{}'", literal.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(99);
        w.put_i64(0);
        w.put_slice(b"Bpayload");
        match parse_copy_data(w.freeze()).unwrap() {
            Some(StreamMessage::XLogData { wal_end, data }) => {
                assert_eq!(wal_end, Lsn(99));
                assert_eq!(&data[..], b"Bpayload");
            }
            other => panic!("{other:?}"),
        }
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(500);
        k.put_i64(0);
        k.put_u8(1);
        match parse_copy_data(k.freeze()).unwrap() {
            Some(StreamMessage::Keepalive {
                wal_end,
                reply_requested,
            }) => {
                assert_eq!(wal_end, Lsn(500));
                assert!(reply_requested);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_truncated_copy_data() {
        assert!(parse_copy_data(Bytes::from_static(b"w123")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"k")).is_err());
        assert!(parse_copy_data(Bytes::new()).is_err());
    }

    #[test]
    fn reads_connection_urls() {
        let params =
            ConnectParams::from_url("postgres://relay:s3cret@db.local:6543/orders", "relay")
                .unwrap();
        assert_eq!(params.host, "db.local");
        assert_eq!(params.port, 6543);
        assert_eq!(params.user, "relay");
        assert_eq!(params.password.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(params.dbname, "orders");
    }

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
