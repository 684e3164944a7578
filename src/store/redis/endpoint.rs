//! Where the worker and the subscriber connect: a fixed address (`REDIS_SOCK`, `REDIS_URL`),
//! or the master that Redis Sentinel names (`REDIS_SENTINELS`), looked up again at every
//! (re)connect (docs/redis.md, "Sentinel").

use redis::{Connection, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::IO_TIMEOUT;

#[derive(Clone)]
pub(super) enum Endpoint {
    Fixed(ConnectionInfo),
    Sentinel(Sentinels),
}

#[derive(Clone)]
pub(super) struct Sentinels {
    /// `host:port` of each Sentinel, asked in this order.
    pub addrs: Vec<String>,
    pub master_name: String,
    pub password: Option<String>,
}

fn failed(what: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "Sentinel", what))
}

/// A connection with [`IO_TIMEOUT`] on connecting, reading and writing.
fn open(info: ConnectionInfo) -> redis::RedisResult<Connection> {
    let conn = redis::Client::open(info)?.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

fn tcp(addr: &str) -> redis::RedisResult<ConnectionInfo> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
        .ok_or_else(|| failed(format!("bad address {addr:?}")))?;
    ConnectionAddr::Tcp(host.to_string(), port).into_connection_info()
}

impl Endpoint {
    /// A connection to the Redis to use now (for Sentinel: the current master, checked with
    /// `ROLE`), with the timeouts set.
    pub(super) fn connect(&self) -> redis::RedisResult<Connection> {
        match self {
            Endpoint::Fixed(info) => open(info.clone()),
            Endpoint::Sentinel(s) => s.master(),
        }
    }
}

impl Sentinels {
    /// Asks each Sentinel in turn for the master's address (`SENTINEL
    /// get-master-addr-by-name`), and connects to the first answer that says it is the
    /// master. A Sentinel that is down, or names a server that is not (yet) the master (a
    /// failover in progress), passes to the next; the caller retries with back-off.
    fn master(&self) -> redis::RedisResult<Connection> {
        let mut why = Vec::new();
        for addr in &self.addrs {
            match self.ask(addr) {
                Ok(conn) => return Ok(conn),
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        Err(failed(format!(
            "no master {:?} found: {}",
            self.master_name,
            why.join("; ")
        )))
    }

    fn ask(&self, addr: &str) -> redis::RedisResult<Connection> {
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        let mut sentinel = open(tcp(addr)?.set_redis_settings(settings))?;
        let master: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query(&mut sentinel)?;
        let (host, port) = master.ok_or_else(|| failed("does not know this master name".into()))?;
        let mut conn = open(ConnectionAddr::Tcp(host.clone(), port).into_connection_info()?)?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(conn),
            _ => Err(failed(format!("{host}:{port} is not a master (yet)"))),
        }
    }
}
