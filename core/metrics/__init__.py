"""The formulas: pure functions from finalised statistics (or a seeded sample) to numbers, one module per
family or shared piece of mathematics. Import only core/base."""
