"""What every TAI service shares, one folder per layer or backend; each layer imports only the
layers below it (import-linter contracts in the root pyproject.toml):

- `runtime`: a service process's lifecycle, and where the layers below are put together;
- `factory`: the one place that chooses adapters from the settings; `instrumentation`: traced
  adapters, gRPC metrics, the tracer provider and logging;
- `grpc`: the server, its interceptors (errors, parsing, authentication, rate limits), security;
- `messaging`: events, topics, outbox, fan-out, idempotency, audit; `caching`: read-through
  cache and watched secrets — both built on the ports, whatever the adapter;
- `auth`: principals, roles, the method table, JWT verification;
- the backends, which import no other backend: `sqlite` (the embedded default), `gcp`
  (Firestore, Pub/Sub), `kafka`, `redis`, `vault`, `memory` (in process), `env` (secrets);
- `ports`: the Protocols the services and the backends meet at;
- `core`: errors, clock, settings, page tokens, conditions, metrics, trace context.
"""
