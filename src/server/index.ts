export { type AppOptions, type Logger, createApp } from './app.js';
export { type RunningServer, type ServeOptions, startServer } from './serve.js';
export { type Storage, type StorageOptions, StartupError, openStorage } from './storage.js';
