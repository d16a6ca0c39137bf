//! Test plugin that misbehaves on purpose, for the host's robustness tests. `config.mode`
//! picks what happens in the hook named by `config.hook` (default "rcpt"); other hooks
//! answer `next`. With `config.when_rcpt`, it misbehaves only for that recipient (so one
//! session can misbehave while others proceed normally).
//!
//! Modes: "loop" (runs forever), "oom" (allocates 16 MiB blocks until memory runs out), "panic", "trap"
//! (executes `unreachable`), "recurse" (unbounded recursion), "big-kv" (asks the host to store
//! a 100 MB value), "big-log" (floods the log), "stdout" (prints to stdout/stderr), "error"
//! (returns an error), "reject" (a normal 550 reject), "slow" (busy-waits `ms` milliseconds),
//! "header" (adds the header `config.name` with `config.value`, whatever they contain),
//! "dns-wait" (looks up the A record of `config.name` up to `config.lookups` times, waiting
//! for each answer), "escape" (tries to leave the sandbox: read the file `config.value`, list
//! `/`, create a file next to it, connect over TCP to `config.name`, bind a UDP socket, resolve
//! `localhost`, read the environment; adds `X-Escape` saying how each attempt ended).

use corvus_sdk::{
    ALL_HOOKS, Config, Context, Hook, HookResult, Outcome, Plugin, clock, dns, kv, log,
};

pub struct Misbehave {
    mode: String,
    hook: String,
    when_rcpt: Option<String>,
    ms: u64,
    lookups: u64,
    header: (String, String),
}

#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64, buf: &mut [u8; 256]) -> u64 {
    buf[(n % 256) as usize] = n as u8;
    let mut local = [0u8; 256];
    local.copy_from_slice(buf);
    recurse(n + 1, &mut local) + local[0] as u64
}

/// Every way out of the sandbox a plugin could try with the standard library, each as
/// `what=ok` or `what=denied (the error)`: "address" is a TCP address to connect to, "path" a
/// file to read (a file is created at "path.escaped").
fn escape((address, path): &(String, String)) -> String {
    fn tried<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(e) => format!("denied ({e})"),
        }
    }
    let env = match std::env::vars().count() {
        0 => "empty".to_string(),
        n => format!("ok ({n} variables)"),
    };
    [
        ("read", tried(std::fs::read(path))),
        ("list", tried(std::fs::read_dir("/"))),
        (
            "create",
            tried(std::fs::File::create(format!("{path}.escaped"))),
        ),
        ("tcp", tried(std::net::TcpStream::connect(address.as_str()))),
        ("udp", tried(std::net::UdpSocket::bind("127.0.0.1:0"))),
        (
            "lookup",
            tried(std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 25))),
        ),
        ("env", env),
    ]
    .iter()
    .map(|(what, how)| format!("{what}={how}"))
    .collect::<Vec<_>>()
    .join("; ")
}

impl Misbehave {
    fn act(&self, ctx: &Context) -> HookResult {
        if ctx.hook().name() != self.hook {
            return Ok(Outcome::next());
        }
        if let Some(r) = &self.when_rcpt {
            let hit = ctx.rcpt().eq_ignore_ascii_case(r)
                || ctx.rcpts().iter().any(|x| x.eq_ignore_ascii_case(r));
            if !hit {
                return Ok(Outcome::next());
            }
        }
        match self.mode.as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "oom" => {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut v = vec![0u8; 16 << 20];
                    v[4095] = 1;
                    keep.push(std::hint::black_box(v));
                }
            }
            "panic" => panic!("misbehave: panic on purpose"),
            "trap" => {
                #[cfg(target_arch = "wasm32")]
                core::arch::wasm32::unreachable();
                #[cfg(not(target_arch = "wasm32"))]
                std::process::abort();
            }
            "recurse" => {
                let mut b = [0u8; 256];
                Ok(Outcome::reject(550, format!("{}", recurse(0, &mut b))))
            }
            "big-kv" => {
                let v = vec![b'x'; 100 << 20];
                kv::set("big", &v, None)?;
                Ok(Outcome::next())
            }
            "big-log" => {
                let line = "y".repeat(1 << 20);
                for _ in 0..1000 {
                    log::info(&line);
                }
                Ok(Outcome::next())
            }
            "stdout" => {
                for i in 0..100_000 {
                    println!("stdout line {i} from a chatty plugin");
                    eprintln!("stderr line {i} from a chatty plugin");
                }
                Ok(Outcome::next())
            }
            "error" => Err("misbehave: error on purpose".into()),
            "reject" => Ok(Outcome::reject(550, "5.7.1 misbehave says no")),
            "slow" => {
                let start = clock::monotonic_ms();
                while clock::monotonic_ms() < start + self.ms {}
                Ok(Outcome::next())
            }
            "header" => Ok(Outcome::next().with_header(&self.header.0, &self.header.1)),
            "dns-wait" => {
                for _ in 0..self.lookups {
                    let _ = dns::a(&self.header.0);
                }
                Ok(Outcome::next())
            }
            "escape" => Ok(Outcome::next().with_header("X-Escape", escape(&self.header))),
            other => Err(format!("misbehave: unknown mode {other:?}")),
        }
    }
}

impl Plugin for Misbehave {
    const NAME: &'static str = "misbehave";
    const HOOKS: &'static [Hook] = &ALL_HOOKS;

    fn init(config: &Config) -> Result<Self, String> {
        let mode = config.string_or("mode", "loop");
        if mode == "init-fail" {
            return Err("misbehave: init fails on purpose".into());
        }
        Ok(Misbehave {
            mode,
            hook: config.string_or("hook", "rcpt"),
            when_rcpt: config.string("when_rcpt"),
            ms: config.int_or("ms", 100) as u64,
            lookups: config.int_or("lookups", 1) as u64,
            header: (
                config.string_or("name", "X-Misbehave"),
                config.string_or("value", ""),
            ),
        })
    }
    fn on_connect(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_helo(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_auth(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_mail(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_rcpt(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_data(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_delivery(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
    fn on_fetch(&mut self, ctx: &Context) -> HookResult {
        self.act(ctx)
    }
}

corvus_sdk::export!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use corvus_sdk::testing::TestHost;

    #[test]
    fn only_the_configured_hook_and_recipient() {
        let mut h = TestHost::<Misbehave>::new(r#"{"mode":"reject","when_rcpt":"bad@x"}"#).unwrap();
        assert_eq!(h.rcpt("a@x", "good@x").unwrap().verdict.name(), "next");
        assert_eq!(h.rcpt("a@x", "bad@x").unwrap().verdict.name(), "reject");
        assert_eq!(h.mail("a@x").unwrap().verdict.name(), "next");
        assert!(TestHost::<Misbehave>::new(r#"{"mode":"init-fail"}"#).is_err());
    }
}
