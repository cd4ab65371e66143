// agentkey/webhooks: the deliverer of webhook events, with the `standardwebhooks` package
// that signs them (a dependency of this subpath only).
export { type AttemptReport, type Deliverer, type DelivererOptions, backoff, startDeliverer } from './deliverer.js';
