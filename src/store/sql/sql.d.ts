// An .sql file imported from TypeScript is its text (the build's and the tests' loaders say so:
// tsup.config.ts and vitest.config.ts).
declare module '*.sql' {
  const text: string;
  export default text;
}
