//! Maps (listener role, path) to what the request is for. Path only, prefix match, as the
//! references do (docs/protocol.md#routes-and-http); trusted routes exist only on the pub listener (docs/protocol.md#routes-and-http).

use crate::config::Paths;

/// Which listener accepted the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Public: subscribers and client publishing (nginx's public server blocks).
    Sub,
    /// Trusted: PHP publishing, online queries, stats (nginx's internal 8895 server).
    Pub,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Long poll, WebSocket or CORS preflight.
    Subscribe,
    /// v4 client publishing (`/bitrix/rest/`, `/bitrix/pubweb/`).
    Rest,
    /// Text publish (POST) and online query (GET).
    Publish,
    /// The v5 backend endpoint (`/bitrix/api/`, docs/v5.md): trusted, so pub listener only.
    JsonRpc,
    ServerStats,
    /// Liveness and store reachability for monitoring and load balancers.
    Health,
    /// Prometheus exposition.
    Metrics,
    NotFound,
}

pub fn route(role: Role, path: &str, paths: &Paths) -> Route {
    let under = |prefix: &str| path.starts_with(prefix);
    match role {
        Role::Sub if under(&paths.subws) || under(&paths.sub) => Route::Subscribe,
        Role::Sub if under(&paths.rest) || under("/bitrix/pubweb/") => Route::Rest,
        Role::Pub if under(&paths.jsonrpc) => Route::JsonRpc,
        Role::Pub if under(&paths.publish) => Route::Publish,
        Role::Pub if under("/server-stat") => Route::ServerStats,
        Role::Pub if path == "/health" => Route::Health,
        Role::Pub if path == "/metrics" => Route::Metrics,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> Paths {
        Paths {
            sub: "/bitrix/sub/".into(),
            subws: "/bitrix/subws/".into(),
            publish: "/bitrix/pub/".into(),
            rest: "/bitrix/rest/".into(),
            jsonrpc: "/bitrix/api/".into(),
        }
    }

    #[test]
    fn routes_by_role_and_prefix() {
        let p = paths();
        assert_eq!(route(Role::Sub, "/bitrix/sub/", &p), Route::Subscribe);
        assert_eq!(route(Role::Sub, "/bitrix/subws/x", &p), Route::Subscribe);
        assert_eq!(route(Role::Sub, "/bitrix/pubweb/", &p), Route::Rest);
        assert_eq!(route(Role::Sub, "/bitrix/pub/", &p), Route::NotFound);
        assert_eq!(route(Role::Sub, "/server-stat/", &p), Route::NotFound);
        assert_eq!(route(Role::Pub, "/bitrix/pub/", &p), Route::Publish);
        assert_eq!(route(Role::Pub, "/server-stat", &p), Route::ServerStats);
        assert_eq!(route(Role::Pub, "/bitrix/sub/", &p), Route::NotFound);
        assert_eq!(route(Role::Pub, "/", &p), Route::NotFound);
        assert_eq!(route(Role::Pub, "/health", &p), Route::Health);
        assert_eq!(route(Role::Pub, "/metrics", &p), Route::Metrics);
        assert_eq!(route(Role::Sub, "/metrics", &p), Route::NotFound);
        assert_eq!(route(Role::Pub, "/bitrix/api/", &p), Route::JsonRpc);
        assert_eq!(
            route(Role::Pub, "/bitrix/api/?hostId=x", &p),
            Route::JsonRpc
        );
        assert_eq!(route(Role::Sub, "/bitrix/api/", &p), Route::NotFound);
    }
}
